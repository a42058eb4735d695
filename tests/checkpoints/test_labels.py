"""Class names as people write them: labels files in the encodings their editors save
(UTF-8 with and without a BOM, UTF-16, GBK, Big5, Shift_JIS, Windows-1252, CRLF), names
separated by full-width and ideographic commas, and never a replacement character."""

from __future__ import annotations

import json

import pytest

import model_loader
from model_loader import ModelLoadError
from webapp.checkpoints.fields import Given
from webapp.checkpoints.labels import decode_text, split_names
from webapp.stores.model_names import jsonable_fields

NAMES = ["猫", "狗", "鸟"]


@pytest.mark.parametrize("data, names", [
    ("猫\n狗\n鸟\n".encode("gbk"), NAMES),  # Simplified Chinese Windows' Notepad (ANSI)
    ("猫\r\n狗\r\n鸟\r\n".encode("gbk"), NAMES),
    ("cat猫\ndog狗\nbird鸟\n".encode("gbk"), ["cat猫", "dog狗", "bird鸟"]),
    ("猫，狗，鸟".encode("gbk"), NAMES),
    ("\ufeff猫\r\n狗\r\n鸟\r\n".encode(), NAMES),  # Notepad's UTF-8 (with a BOM)
    ("猫\n狗\n鸟\n".encode("utf-16"), NAMES),  # Notepad's "Unicode" (UTF-16 LE, BOM)
    ("\ufeff猫\n狗\n鸟".encode("utf-16-be"), NAMES),
    ("cat\r\ndog\r\nbird\r\n".encode("utf-16-le"), ["cat", "dog", "bird"]),  # no BOM
    ("貓\n狗\n鳥\n".encode("big5"), ["貓", "狗", "鳥"]),
    ("ねこ\nいぬ\nとり\n".encode("shift_jis"), ["ねこ", "いぬ", "とり"]),
    ("Katze\nHund\nVögel\nBär\n".encode("cp1252"), ["Katze", "Hund", "Vögel", "Bär"]),
    ("猫、狗、鸟\n".encode(), NAMES),
    ("猫；狗；鸟".encode(), NAMES),
    (json.dumps({"id2label": {"0": "猫", "1": "狗", "2": "鸟"}, "model_type": "resnet"})
     .encode(), NAMES),  # a Hugging Face config.json
])
def test_a_labels_file_in_any_common_encoding_gives_the_right_names(data, names):
    read = model_loader.parse_labels_file(data, "x")
    assert read == names
    assert not any("\ufffd" in name for name in read)


@pytest.mark.parametrize("data", [
    bytes(range(128, 256)),  # no encoding reads this as names
    b"\xff\xfe\x00\xd8",  # a UTF-16 BOM, then half a character
    "猫\n狗\n鸟\n".encode()[:-2] + b"\x9f\x90\n" + b"\x81\xff",
])
def test_a_labels_file_no_encoding_reads_is_refused_with_save_as_utf8(data):
    with pytest.raises(ModelLoadError, match="save it as UTF-8") as info:
        model_loader.parse_labels_file(data, "x")
    assert "\ufffd" not in str(info.value)


def test_the_encoding_a_legacy_file_was_read_in_is_said():
    given = Given.parse(
        "x", labels="猫\n狗\n鸟\n".encode("gbk"))
    assert given.classes == NAMES
    assert given.classes_from == "the labels file (read as GBK (GB18030))"
    assert decode_text(b"a\nb", "x") == ("a\nb", "utf-8")


@pytest.mark.parametrize("text, names", [
    ("cat, dog ,fox", ["cat", "dog", "fox"]),
    ("猫，狗，鸟", NAMES),
    ("猫、狗、鸟", NAMES),
    ("猫；狗；鸟", NAMES),
    ("cat;dog", ["cat", "dog"]),
    ("cat\r\ndog\r\n\r\nfox\r\n", ["cat", "dog", "fox"]),
    ("Tinca tinca, tench\ngoldfish", ["Tinca tinca, tench", "goldfish"]),  # lines win
    ("  \n", []),
])
def test_one_rule_splits_names_everywhere(text, names):
    assert split_names(text) == names
    if len(names) >= 2:
        assert model_loader.parse_classes_field(text, "x") == names


def test_a_name_with_a_replacement_character_is_refused():
    """A form field sent in another encoding reaches the server with U+FFFD in it
    (Werkzeug replaces what is not UTF-8): it is refused, never stored."""
    with pytest.raises(ModelLoadError, match="could not be read .*U\\+FFFD.*UTF-8"):
        model_loader.parse_classes_field("cat\ufffd, dog", "x")


def test_a_labels_file_reaches_the_converter_as_its_bytes():
    """The builder child gets what the person said as JSON: the labels file's bytes
    travel whole (base64), so the child reads them in their own encoding."""
    data = "猫\n狗\n鸟\n".encode("gbk")
    sent = json.loads(json.dumps(jsonable_fields({"labels": data, "classes": None})))
    given = Given.parse("x", **sent)
    assert given.classes == NAMES


def test_a_gbk_labels_file_is_stored_with_the_right_names(tmp_path, model_files):
    """Through the store (what the admin API and `flask models add` call): the names in
    meta.json are the file's, no U+FFFD, and the summary says how the file was read."""
    from webapp.engines import EngineSettings
    from webapp.stores.registry import Registry

    store = Registry(tmp_path / "store", EngineSettings(cache_dir=str(tmp_path / "cache"),
                                                        quantize="none"))
    names = ["猫", "狗", "狐狸", "猫头鹰", "牦牛"]
    meta = store.add(model_files.bare.path, untrusted=False,
                     fields={"labels": "\r\n".join(names).encode("gbk")})
    assert meta["classes"] == names
    assert "5 classes from the labels file (read as GBK (GB18030))" in meta["summary"]
    stored = json.loads((store.models_dir / meta["id"] / "meta.json").read_text("utf-8"))
    assert stored["classes"] == names and "\ufffd" not in json.dumps(stored,
                                                                    ensure_ascii=False)
