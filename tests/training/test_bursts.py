"""Honest evaluation: pictures taken together (one hold of the capture button, or within
2 s by their file times) stay on one side of the split, and the report says which classes
were too few bursts to test (webapp/training/bursts.py, webapp/training/data.py)."""

from __future__ import annotations

import io
import os
import random
import time

import pytest

from testkit.holds import hold
from testkit.photos import encode, photo
from webapp.training import bursts
from webapp.training import report as training_report
from webapp.training.data import SPLITS, scan


def _write_holds(folder, picture, holds: int, frames: int, start: float, rng) -> dict:
    """``holds`` bursts of ``frames`` JPEGs, their file times a burst apart; which burst
    each file belongs to."""
    folder.mkdir(parents=True, exist_ok=True)
    which = {}
    for h in range(holds):
        pressed = start + h * 60
        for f, frame in enumerate(hold(picture, rng, frames, size=(96, 72))):
            path = folder / f"h{h}-f{f}.jpg"
            path.write_bytes(encode(frame, "JPEG", quality=85))
            os.utime(path, (pressed + f * 0.25, pressed + f * 0.25))
            which[path.name] = h
    return which


@pytest.fixture(scope="module")
def burst_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bursts") / "data"
    rng = random.Random(5)
    start = time.time() - 86400
    groups = {"cat": _write_holds(root / "cat", photo("chelsea").image, 6, 4, start, rng),
              "mug": _write_holds(root / "mug", photo("coffee").image, 2, 4, start + 1000, rng)}
    return root, groups


def test_the_split_never_puts_one_burst_on_two_sides(burst_data):
    root, groups = burst_data
    splits = scan(root, bursts="times")
    for label, cls in enumerate(splits.classes):
        sides = {}
        for side in SPLITS:
            for sample in splits.split(side):
                if sample.label == label:
                    sides.setdefault(groups[cls][sample.path.name], set()).add(side)
        assert all(len(s) == 1 for s in sides.values()), (cls, sides)
    assert splits.bursts["cat"]["bursts"] == 6 and splits.bursts["cat"]["tested"]
    assert any(s.label == 0 for s in splits.test)


def test_a_class_with_too_few_bursts_is_named_and_not_tested(burst_data):
    root, _ = burst_data
    splits = scan(root, bursts="times")
    assert splits.bursts["mug"]["bursts"] == 2
    assert splits.untested == ["mug"]
    mug = splits.classes.index("mug")
    assert not any(s.label == mug for s in splits.test)
    assert any("'mug'" in note and "only 2 bursts" in note for note in splits.notes)
    caveat = training_report.caveat({"split": "test", "bursts": splits.bursts,
                                     "thin_classes": {"mug": 0}})
    assert "mug" in caveat and "bursts" in caveat


def test_the_unsure_threshold_measures_each_training_picture_against_the_other_holds(
        burst_data):
    """The "I'm not sure" threshold also measures every training picture against the
    pictures of the *other* training bursts (engines.openset.fit_knn): the numbers
    ``training_bursts`` gives follow the holds of the capture button, one number per
    hold; a class with a single training hold (mug: one trained, one validated) has
    nothing to be measured against (-1); with ``--bursts off`` every picture stands
    alone."""
    root, groups = burst_data
    splits = scan(root, bursts="times")
    numbers = bursts.training_bursts(splits)
    assert len(numbers) == len(splits.train)
    by_hold: dict[int, set] = {}
    for sample, number in zip(splits.train, numbers):
        if splits.classes[sample.label] == "mug":
            assert number == -1
        else:
            by_hold.setdefault(groups["cat"][sample.path.name], set()).add(number)
    assert len(by_hold) >= 2 and all(len(n) == 1 for n in by_hold.values())
    assert len(set.union(*by_hold.values())) == len(by_hold)
    alone = bursts.training_bursts(scan(root, bursts="off"))
    assert sorted(alone) == list(range(len(alone)))


def test_files_copied_together_are_split_one_by_one_in_auto_mode(tmp_path):
    """A folder of files written at once: their times say nothing, so auto splits them
    picture by picture (and says so), rather than calling the class one burst."""
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for n in range(10):
            (tmp_path / cls / f"{n}.jpg").write_bytes(
                encode(photo("chelsea" if cls == "a" else "coffee").image.resize((64, 48)),
                       "JPEG"))
    splits = scan(tmp_path)
    assert splits.counts("test") == {"a": 2, "b": 2}
    assert not splits.bursts["a"]["by_burst"]
    assert any("show no bursts" in note for note in splits.notes)


def test_group_starts_a_burst_after_the_gap(tmp_path):
    times = [0, 0.5, 1.9, 5, 5.1, 20]
    paths = []
    for n, t in enumerate(times):
        path = tmp_path / f"{n}.jpg"
        path.write_bytes(b"x")
        os.utime(path, (1e9 + t, 1e9 + t))
        paths.append(path)
    assert [len(b) for b in bursts.group(paths)] == [3, 2, 1]
    assert len(bursts.group(paths, gap=0)) == 6


def test_teach_keeps_when_a_picture_was_taken(client_with_admin):
    client, auth = client_with_admin
    assert client.post("/admin/api/datasets", json={"name": "held", "classes": ["cat"]},
                       headers=auth).status_code == 201
    pressed_ms = (time.time() - 600) * 1000
    response = client.post(
        "/admin/api/datasets/held/images", headers=auth, content_type="multipart/form-data",
        data={"label": "cat", "taken": str(int(pressed_ms)),
              "image": (io.BytesIO(encode(photo("chelsea").image, "JPEG")), "camera.jpg")})
    assert response.status_code == 201, response.get_data(as_text=True)
    response = client.post(
        "/admin/api/datasets/held/images", headers=auth, content_type="multipart/form-data",
        data={"label": "cat", "taken": "tomorrow",
              "image": (io.BytesIO(encode(photo("chelsea").image, "JPEG")), "camera.jpg")})
    assert response.status_code == 400
    assert "taken" in response.get_json()["error"]["message"]


@pytest.fixture()
def client_with_admin(tmp_path):
    from webapp import create_app

    token = "bursts-admin-token-0123456789"
    app = create_app({"TESTING": True, "MODEL_DIR": str(tmp_path / "models"),
                      "DATA_DIR": str(tmp_path / "data"), "ADMIN_TOKEN": token})
    return app.test_client(), {"Authorization": f"Bearer {token}"}
