"""Teach-live datasets through the real admin API (Flask test client) and on disk: create,
capture/upload, re-encoding, delete, export/import zip -- and refusal of hostile names,
images and archives, with nothing written where it should not be.  No training here
(tests/training/test_teach.py trains)."""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from testkit import attacks
from testkit.admin import BEARER, TOKEN, assert_error, csrf_from, login
from testkit.photos import encode
from testkit.shapes import draw
from webapp import create_app
from webapp.training.data import scan


def make_app(tmp_path: Path, **config):
    app = create_app({"TESTING": True, "MODEL_DIR": str(tmp_path / "models"),
                      "DATA_DIR": str(tmp_path / "data"), "ADMIN_TOKEN": TOKEN, **config})
    return app


@pytest.fixture()
def client(tmp_path):
    return make_app(tmp_path).test_client()


def files_under(root: Path) -> dict[str, int]:
    """Every file under ``root`` except in-progress temp files."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
            if p.is_file() and ".tmp" not in p.relative_to(root).parts}


def shape_png(shape="circle", seed=0, size=120) -> bytes:
    return encode(draw(shape, random.Random(seed), size), "PNG")


def create(client, name="pens", classes=("pen", "cup")):
    response = client.post("/admin/api/datasets", headers=BEARER,
                           json={"name": name, "classes": list(classes)})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def add(client, data: bytes, label="pen", name="pens", filename="x.png", headers=BEARER):
    return client.post(f"/admin/api/datasets/{name}/images", headers=headers,
                       data={"label": label, "image": (io.BytesIO(data), filename)})


# --------------------------------------------------------------------------- datasets


def test_create_list_describe_and_delete_a_dataset(client, tmp_path):
    body = create(client, "pens-and-cups", ["pen", "red cup", "Äpfel"])
    assert body["name"] == "pens-and-cups" and body["images"] == 0
    assert [c["name"] for c in body["classes"]] == ["pen", "red cup", "Äpfel"]
    # On disk: exactly the layout the fine-tuning command reads.
    folder = tmp_path / "data" / "pens-and-cups"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["pen", "red cup", "Äpfel"]
    assert body["display_name"] == "pens-and-cups"  # its name, kept in .dataset.json
    listed = client.get("/admin/api/datasets", headers=BEARER).get_json()["datasets"]
    assert [d["name"] for d in listed] == ["pens-and-cups"]
    assert_error(client.post("/admin/api/datasets", headers=BEARER,
                             json={"name": "pens-and-cups", "classes": ["x"]}),
                 409, "dataset_exists")
    assert client.delete("/admin/api/datasets/pens-and-cups", headers=BEARER).status_code == 200
    assert not folder.exists()
    assert_error(client.get("/admin/api/datasets/pens-and-cups", headers=BEARER), 404,
                 "unknown_dataset")


@pytest.mark.parametrize("name", ["", "   ", "x" * 49, "tab\tname", "nul\x00", None, 7])
def test_bad_dataset_names_are_refused_before_the_filesystem(client, tmp_path, name):
    message = assert_error(client.post("/admin/api/datasets", headers=BEARER,
                                       json={"name": name, "classes": ["a", "b"]}),
                           400, "bad_name")
    assert "name" in message
    assert files_under(tmp_path / "data") == {}


@pytest.mark.parametrize("name, dataset_id", [
    ("第一课", "dataset"), ("Pens & Cups!", "pens-cups"), ("../evil", "evil"),
    ("%2e%2e", "2e-2e"), ("..", "dataset"), ("UPPER case", "upper-case"),
    ("Ölfässer", "olfasser"), ("con", "con-2"), ("NUL", "nul-2"), ("com1", "com1-2"),
])
def test_a_dataset_name_in_any_script_gets_a_safe_id(client, tmp_path, name, dataset_id):
    """The name is what the teacher typed; the folder and the address are a slug made
    from it, never the name itself, nor a name Windows keeps for a device (an exported
    dataset must unzip there)."""
    body = create(client, name, ["杯子", "pen"])
    assert (body["name"], body["display_name"]) == (dataset_id, name)
    assert [p.name for p in (tmp_path / "data").iterdir() if p.name != ".tmp"] == [dataset_id]
    listed = client.get("/admin/api/datasets", headers=BEARER).get_json()["datasets"]
    assert [(d["name"], d["display_name"]) for d in listed] == [(dataset_id, name)]
    assert not (tmp_path / "evil").exists()


def test_two_names_of_one_slug_get_two_ids_and_a_name_is_taken_once(client):
    assert create(client, "第一课", ["a", "b"])["name"] == "dataset"
    assert create(client, "第二课", ["a", "b"])["name"] == "dataset-2"
    message = assert_error(client.post("/admin/api/datasets", headers=BEARER,
                                       json={"name": "第一课", "classes": ["c", "d"]}),
                           409, "dataset_exists")
    assert "第一课" in message


def test_classes_typed_in_chinese_are_split_like_commas(client):
    """One rule (``webapp.checkpoints.labels.split_names``, as for an upload's classes):
    one name a line, or all on one line separated by 「，」「、」「；」 as by ``,``; a
    class name may not hold a separator."""
    def typed(name, classes):
        response = client.post("/admin/api/datasets", headers=BEARER,
                               json={"name": name, "classes": classes})
        assert response.status_code == 201, response.get_json()
        return sorted(c["name"] for c in response.get_json()["classes"])

    assert typed("第一课", "杯子，铅笔、剪刀") == ["剪刀", "杯子", "铅笔"]
    assert typed("第二课", "尺子；橡皮; 书包, 水杯;本子") == ["书包", "尺子", "本子", "橡皮",
                                                         "水杯"]
    assert typed("第三课", "尺子\r\n 橡皮 \n\n书包\n") == ["书包", "尺子", "橡皮"]
    for classes in ("尺子；橡皮\n书包", ["尺子，橡皮", "书包"], ["a;b", "c"]):
        response = client.post("/admin/api/datasets", headers=BEARER,
                               json={"name": "第四课", "classes": classes})
        assert response.status_code == 400, classes
        assert response.get_json()["error"]["code"] == "bad_class"


@pytest.mark.parametrize("classes, code", [
    (["a/b", "c"], "bad_class"), ([".x", "c"], "bad_class"), (["..", "c"], "bad_class"),
    (["x" * 41], "bad_class"), (["pen", "Pen"], "duplicate_class"), ([], "bad_class"),
    (["ok", "nul\x00"], "bad_class"), (["a:b"], "bad_class"), ("not a list", None),
    (["CON", "cup"], "bad_class"), (["pen", "nul"], "bad_class"), (["com1.txt"], "bad_class"),
    (["Lpt9"], "bad_class"), (["pen."], "bad_class"), (["Con Air", "console"], None),
    ([str(n) for n in range(51)], "too_many_classes"),
])
def test_bad_class_names_are_refused(client, tmp_path, classes, code):
    response = client.post("/admin/api/datasets", headers=BEARER,
                           json={"name": "pens", "classes": classes})
    if code is None:  # a comma-separated string is accepted as a list; near-device names
        assert response.status_code == 201
        return
    assert_error(response, 400, code)
    assert not (tmp_path / "data" / "pens").exists()


def test_names_from_the_url_never_reach_the_filesystem(client, tmp_path):
    create(client)
    png = shape_png()
    for url in ("/admin/api/datasets/..%2f..%2fetc", "/admin/api/datasets/.tmp",
                "/admin/api/datasets/.jobs/images", "/admin/api/datasets/pens/images/..%2fx",
                "/admin/api/datasets/pens/images/../../secret_key"):
        assert client.get(url, headers=BEARER).status_code in (404, 405), url
        assert client.delete(url, headers=BEARER).status_code in (404, 405), url
    assert_error(add(client, png, label="../../models"), 400, "bad_class")
    assert_error(add(client, png, label="glass"), 404, "unknown_class")
    assert list(files_under(tmp_path / "data")) == ["pens/.dataset.json"]  # its name only


# --------------------------------------------------------------------------- images


def test_images_are_stored_re_encoded_as_clean_jpegs(client, tmp_path):
    create(client)
    # A PNG carrying a text chunk and bytes after its end, a rotated phone JPEG with
    # EXIF and a comment, a huge image: none of their bytes but the pixels are kept.
    img = draw("circle", random.Random(1), 200)
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "SECRET-PAYLOAD-IN-A-CHUNK")
    png = encode(img, "PNG", pnginfo=info) + b"SECRET-PAYLOAD-AFTER-THE-END"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    exif[0x010F] = "SECRET-CAMERA-MAKER"
    phone = encode(Image.new("RGB", (300, 200), (200, 30, 30)), "JPEG", exif=exif.tobytes(),
                   comment=b"SECRET-COMMENT")
    huge = encode(Image.new("RGB", (3000, 1500), (10, 120, 200)), "JPEG")
    stored = []
    for data, label in ((png, "pen"), (phone, "cup"), (huge, "cup")):
        response = add(client, data, label=label)
        assert response.status_code == 201, response.get_json()
        body = response.get_json()
        assert body["class"] == label and body["url"].endswith(body["id"])
        stored.append(body)
    assert stored[-1]["counts"] == {"pen": 1, "cup": 2}
    files = sorted((tmp_path / "data" / "pens").rglob("*.jpg"))
    assert len(files) == 3
    for path in files:
        raw = path.read_bytes()
        assert raw[:3] == b"\xff\xd8\xff" and raw.endswith(b"\xff\xd9")
        assert b"SECRET" not in raw
        with Image.open(path) as saved:
            assert saved.format == "JPEG" and not saved.getexif()
    sizes = {(b["width"], b["height"]) for b in stored}
    assert (200, 300) in sizes  # the phone photo stored upright
    assert (1024, 512) in sizes  # shrunk to 1024 px on the longer side
    # Served back to the page: the JPEG, and a thumbnail.
    response = client.get(stored[0]["url"], headers=BEARER)
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    on_disk = tmp_path / "data" / "pens" / "pen" / f"{stored[0]['id']}.jpg"
    assert response.data == on_disk.read_bytes()
    thumb = client.get(stored[2]["url"] + "?size=64", headers=BEARER)
    with Image.open(io.BytesIO(thumb.data)) as small:
        assert max(small.size) == 64
    assert_error(client.get(stored[2]["url"] + "?size=5000", headers=BEARER), 400, "bad_size")


def test_bad_images_get_a_clear_4xx_and_store_nothing(tmp_path):
    client = make_app(tmp_path, MAX_IMAGE_PIXELS=100_000, MAX_UPLOAD_MB=1,
                      MAX_CONTENT_LENGTH=1024 * 1024).test_client()
    create(client)
    good = shape_png()
    before = files_under(tmp_path / "data")
    cases = [
        (b"%PDF-1.4 not an image", 415, "not_an_image"),
        (good[: len(good) // 2], 422, "unreadable_image"),
        (b"", 400, "empty_file"),
        (encode(Image.new("RGB", (1000, 1000)), "PNG"), 413, "too_many_pixels"),
        (encode(Image.new("RGB", (8, 8)), "PCX"), 415, "unsupported_format"),
    ]
    for data, status, code in cases:
        assert_error(add(client, data), status, code)
    too_big = add(client, b"\xff\xd8" + bytes(2 * 1024 * 1024))
    assert "MAX_UPLOAD_MB" in assert_error(too_big, 413, "too_large")
    assert_error(client.post("/admin/api/datasets/pens/images", headers=BEARER,
                             data={"image": (io.BytesIO(good), "x.png")}), 400, "no_label")
    assert_error(client.post("/admin/api/datasets/pens/images", headers=BEARER,
                             data={"label": "pen"}), 400, "no_image")
    assert_error(add(client, good, name="nope"), 404, "unknown_dataset")
    assert files_under(tmp_path / "data") == before


def test_several_images_in_one_request_and_per_image_delete(client, tmp_path):
    create(client)
    files = [(io.BytesIO(shape_png(seed=n)), f"{n}.png") for n in range(3)]
    response = client.post("/admin/api/datasets/pens/images", headers=BEARER,
                           data={"label": "pen", "image": files})
    assert response.status_code == 201
    added = response.get_json()["added"]
    assert len(added) == 3 and response.get_json()["counts"] == {"pen": 3, "cup": 0}
    gone = added[1]["id"]
    deleted = client.delete(f"/admin/api/datasets/pens/images/{gone}", headers=BEARER)
    assert deleted.get_json() == {"deleted": gone, "label": "pen",
                                  "counts": {"pen": 2, "cup": 0}}
    assert_error(client.delete(f"/admin/api/datasets/pens/images/{gone}", headers=BEARER),
                 404, "unknown_image")
    described = client.get("/admin/api/datasets/pens", headers=BEARER).get_json()
    pen = next(c for c in described["classes"] if c["name"] == "pen")
    assert sorted(pen["images"]) == sorted(a["id"] for a in added if a["id"] != gone)


def test_a_dataset_holds_at_most_max_dataset_images(tmp_path):
    client = make_app(tmp_path, MAX_DATASET_IMAGES=10).test_client()
    create(client)
    for n in range(10):
        assert add(client, shape_png(seed=n), label="pen" if n % 2 else "cup").status_code == 201
    message = assert_error(add(client, shape_png()), 409, "dataset_full")
    assert "MAX_DATASET_IMAGES" in message


def test_classes_can_be_added_and_deleted(client, tmp_path):
    create(client)
    add(client, shape_png(), label="cup")
    response = client.post("/admin/api/datasets/pens/classes", headers=BEARER,
                           json={"name": "scissors"})
    assert response.status_code == 201
    assert [c["name"] for c in response.get_json()["classes"]] == ["cup", "pen", "scissors"]
    assert_error(client.post("/admin/api/datasets/pens/classes", headers=BEARER,
                             json={"name": "CUP"}), 409, "class_exists")
    response = client.delete("/admin/api/datasets/pens/classes/cup", headers=BEARER)
    assert [c["name"] for c in response.get_json()["classes"]] == ["pen", "scissors"]
    assert not (tmp_path / "data" / "pens" / "cup").exists()


# --------------------------------------------------------------------------- export / import


def fill(client, per_class=4, classes=("pen", "cup")):
    for label in classes:
        for n in range(per_class):
            shape = "circle" if label == "pen" else "square"
            assert add(client, shape_png(shape, seed=n), label=label).status_code == 201


def test_export_is_a_zip_of_class_folders_the_finetune_command_reads(client, tmp_path):
    create(client)
    fill(client, per_class=4)
    response = client.get("/admin/api/datasets/pens/export", headers=BEARER)
    assert response.status_code == 200 and response.mimetype == "application/zip"
    assert 'filename="pens.zip"' in response.headers["Content-Disposition"]
    with zipfile.ZipFile(io.BytesIO(response.data)) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        assert len(names) == 8 and all(n.startswith(("pens/pen/", "pens/cup/")) for n in names)
        zf.extractall(tmp_path / "unzipped")
    splits = scan(tmp_path / "unzipped" / "pens")
    assert splits.classes == ["cup", "pen"] and not splits.skipped
    assert len(splits.train) + len(splits.val) + len(splits.test) == 8


def test_import_round_trips_an_export(client, tmp_path):
    create(client, classes=("pen", "cup", "scissors"))
    fill(client, per_class=3)  # scissors stays empty
    archive = client.get("/admin/api/datasets/pens/export", headers=BEARER).data
    response = client.post("/admin/api/datasets", headers=BEARER,
                           data={"archive": (io.BytesIO(archive), "pens.zip"), "name": "copy"})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["name"] == "copy" and body["images"] == 6
    assert body["import"]["imported"] == 6 and body["import"]["skipped"] == 0
    assert {c["name"]: c["count"] for c in body["classes"]} == {"cup": 3, "pen": 3,
                                                                "scissors": 0}
    # Without a name: the file name gives one; the same name twice is a conflict.
    response = client.post("/admin/api/datasets", headers=BEARER,
                           data={"archive": (io.BytesIO(archive), "My Pens!.zip")})
    assert response.get_json()["name"] == "my-pens"
    assert_error(client.post("/admin/api/datasets", headers=BEARER,
                             data={"archive": (io.BytesIO(archive), "x.zip"), "name": "copy"}),
                 409, "dataset_exists")


def hostile_zip(path: Path) -> Path:
    png = shape_png()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for n in range(3):
            zf.writestr(f"pen/{n}.png", shape_png("circle", seed=n))
            zf.writestr(f"train/cup/{n}.jpg", encode(draw("square", random.Random(n), 90),
                                                    "JPEG"))
        zf.writestr("../../evil.png", png)                    # zip-slip
        zf.writestr("pen/../../../evil2.png", png)            # zip-slip inside a class
        zf.writestr("/etc/evil3.png", png)                    # an absolute name
        zf.writestr("pen/notes.txt", b"not an image at all")  # skipped and counted
        zf.writestr("pen/broken.png", png[:100])              # truncated image
        zf.writestr("loose.png", png)                         # not in a class folder
        zf.writestr("__MACOSX/pen/._0.png", b"resource fork")
        zf.writestr(".hidden/x.png", png)
        zf.writestr("pen/bomb.png", bytes(60 * 1024 * 1024))  # 60 MB of zeros, ~60 KB zipped
    return path


def test_import_is_safe_against_hostile_archives(client, tmp_path):
    archive = hostile_zip(tmp_path / "hostile.zip")
    assert archive.stat().st_size < 1_000_000
    response = client.post("/admin/api/datasets", headers=BEARER,
                           data={"archive": (io.BytesIO(archive.read_bytes()), "h.zip"),
                                 "name": "imported"})
    assert response.status_code == 201, response.get_json()
    result = response.get_json()["import"]
    assert result["per_class"] == {"cup": 3, "pen": 3}  # train/ merged; nothing else
    reasons = result["skipped_reasons"]
    assert reasons["not an image"] == 1 and reasons["a damaged image"] == 1
    assert reasons["larger than the upload limit"] == 1  # the bomb, never decompressed
    assert reasons["not in a class folder"] == 1
    assert reasons["an unsafe path (outside its folder)"] == 3  # '..' and absolute names
    assert reasons["hidden or system file"] == 2  # __MACOSX, .hidden
    assert result["skipped"] == sum(reasons.values())
    # Nothing outside the new dataset's class folders, no file named by the archive.
    written = files_under(tmp_path / "data")
    assert len(written) == 7 and "imported/.dataset.json" in written  # and its name
    assert all(name.startswith(("imported/pen/", "imported/cup/", "imported/.dataset.json"))
               for name in written)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "hostile.zip", "models"]
    assert not list(tmp_path.parent.glob("evil*"))
    assert not list((tmp_path / "data" / ".tmp").iterdir())  # the spooled archive is gone


def test_bad_archives_are_refused(tmp_path):
    client = make_app(tmp_path, MAX_DATASET_MB=1).test_client()
    post = lambda data, name="x.zip": client.post(  # noqa: E731
        "/admin/api/datasets", headers=BEARER, data={"archive": (io.BytesIO(data), name)})
    assert_error(post(b"PK\x03\x04 this is no zip"), 415, "not_a_zip")
    assert_error(post(b""), 400, "empty_file")
    only_text = io.BytesIO()
    with zipfile.ZipFile(only_text, "w") as zf:
        zf.writestr("pen/readme.txt", "hello")
    error = response_error = post(only_text.getvalue()).get_json()["error"]
    assert error["code"] == "no_images" and error["import"]["skipped"] == 1, response_error
    big = io.BytesIO()
    with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("pen/noise.bin", random.Random(0).randbytes(1_200_000))
    message = assert_error(post(big.getvalue()), 413, "too_large")
    assert "MAX_DATASET_MB" in message
    assert_error(client.post("/admin/api/datasets", headers=BEARER,
                             data={"name": "x"}, content_type="multipart/form-data"),
                 400, "no_archive")
    assert files_under(tmp_path / "data") == {}


def test_an_archive_listing_millions_of_entries_is_refused_before_it_is_read(tmp_path):
    client = make_app(tmp_path, MAX_DATASET_IMAGES=10).test_client()
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as zf:
        for n in range(1100):
            zf.writestr(f"pen/{n}.png", b"")
    message = assert_error(client.post(
        "/admin/api/datasets", headers=BEARER,
        data={"archive": (io.BytesIO(many.getvalue()), "many.zip")}), 413, "too_many_files")
    assert "more than 1040 files" in message and "MAX_DATASET_IMAGES" in message


def test_entries_are_counted_in_the_central_directory_not_taken_from_the_end_record(
        tmp_path):
    """The end record says 1 entry, the directory holds 1,100: refused before ZipFile
    parses a single one of them."""
    client = make_app(tmp_path, MAX_DATASET_IMAGES=10).test_client()
    archive = attacks.understated_zip(1100)
    assert len(zipfile.ZipFile(io.BytesIO(archive)).infolist()) == 1100
    assert_error(client.post("/admin/api/datasets", headers=BEARER, data={
        "archive": (io.BytesIO(archive), "many.zip")}), 413, "too_many_files")
    assert files_under(tmp_path / "data") == {}


def test_a_file_built_to_be_slow_to_decode_stops_the_import(tmp_path):
    """An archive of JPEG padding (deflate makes each 4 MB member a few KB) is refused
    as a whole at the first such member, naming it; nothing is imported.  The same
    file sent as one image is refused too."""
    client = make_app(tmp_path).test_client()
    archive = attacks.filler_zip(members=3, member_size=4 * attacks.MB)
    assert len(archive) < 100_000
    response = client.post("/admin/api/datasets", headers=BEARER, data={
        "archive": (io.BytesIO(archive), "padding.zip"), "name": "padding"})
    message = assert_error(response, 422, "too_slow_to_decode")
    assert message.startswith("pen/0.jpg: ") and "Nothing was imported" in message
    assert files_under(tmp_path / "data") == {}
    create(client)
    assert_error(add(client, attacks.filler_jpeg(4 * attacks.MB), filename="p.jpg"), 422,
                 "too_slow_to_decode")
    assert_error(add(client, attacks.many_scans_jpeg(500), filename="s.jpg"), 422,
                 "too_slow_to_decode")
    assert client.get("/admin/api/datasets/pens", headers=BEARER).get_json()["images"] == 0


# --------------------------------------------------------------------------- auth and pages


def test_every_teach_route_needs_the_admin_token_or_a_session(client, tmp_path):
    """Like test_admin's check, with real dataset names and ids: the guard runs before
    anything touches DATA_DIR."""
    create(client)
    image_id = add(client, shape_png()).get_json()["id"]
    app = client.application
    before = files_under(tmp_path)
    rules = [r for r in app.url_map.iter_rules() if r.endpoint.startswith("admin.teach.")]
    assert len(rules) >= 20
    anonymous = app.test_client()
    for rule in rules:
        url = (rule.rule.replace("<name>", "pens").replace("<image_id>", image_id)
               .replace("<label>", "pen").replace("<job_id>", "20260101-000000-abcdef")
               .replace("<model_id>", "builtin").replace("<filename>", "confusion.png"))
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                response = anonymous.open(url, method=method, headers=headers)
                if url.startswith("/admin/api/"):
                    assert response.status_code == 401, (method, url)
                else:
                    assert response.status_code == 302, (method, url)
                    assert response.location.startswith("/admin/login")
            app.extensions["admin_login_limit"][0].storage.reset()
    assert files_under(tmp_path) == before


def test_session_calls_need_the_csrf_token(client):
    create(client)
    login(client)
    refused = client.post("/admin/api/datasets/pens/images",
                          data={"label": "pen", "image": (io.BytesIO(shape_png()), "x.png")})
    assert_error(refused, 400, "csrf_failed")
    page = client.get("/admin/teach/pens").get_data(as_text=True)
    token = csrf_from(page)
    accepted = client.post("/admin/api/datasets/pens/images", headers={"X-CSRFToken": token},
                           data={"label": "pen", "image": (io.BytesIO(shape_png()), "x.png")})
    assert accepted.status_code == 201


def test_the_teach_pages_work_without_javascript_for_the_basics(client, tmp_path):
    token = login(client)
    index = client.get("/admin/teach")
    assert index.status_code == 200 and "New dataset" in index.get_data(as_text=True)
    # Create with the form (classes as a comma-separated list).
    response = client.post("/admin/teach", data={"csrf_token": token, "name": "fruit",
                                                 "classes": "apple, pear"})
    assert response.status_code == 302 and response.location == "/admin/teach/fruit"
    bad = client.post("/admin/teach", data={"csrf_token": token, "name": "  ",
                                            "classes": "a"})
    assert bad.status_code == 400 and "Give the dataset a name" in bad.get_data(as_text=True)
    client.post("/admin/api/datasets/fruit/images", headers={"X-CSRFToken": token},
                data={"label": "apple", "image": (io.BytesIO(shape_png()), "a.png")})
    page = client.get("/admin/teach/fruit").get_data(as_text=True)
    assert 'data-label="apple"' in page and 'data-label="pear"' in page
    assert page.count('class="teach-thumb"') == 1 and "js/teach.js" in page
    assert "<script>" not in page  # no inline script (CSP)
    client.post("/admin/teach/fruit/classes", data={"csrf_token": token, "class": "plum"})
    assert 'data-label="plum"' in client.get("/admin/teach/fruit").get_data(as_text=True)
    # Import with the form, then delete with the form.
    archive = client.get("/admin/api/datasets/fruit/export").data
    response = client.post("/admin/teach/_import", data={
        "csrf_token": token, "archive": (io.BytesIO(archive), "fruit.zip"), "name": "fruit2"})
    assert response.status_code == 302 and response.location == "/admin/teach/fruit2"
    assert "Imported 1 images" in client.get("/admin/teach/fruit2").get_data(as_text=True)
    response = client.post("/admin/teach/fruit2/delete", data={"csrf_token": token})
    assert response.status_code == 302
    listing = client.get("/admin/teach").get_data(as_text=True)
    assert 'id="dataset-fruit"' in listing and 'id="dataset-fruit2"' not in listing
    assert client.get("/admin/teach/nope").status_code == 404
