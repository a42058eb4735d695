"""Class names: from a file's own fields, the ``classes`` form field or a labels file;
checked (at least two, no duplicates, no control characters) and put in output order.

``split_names`` is the one rule for a list of names typed or saved as text (the page, the
API, the command line, a labels file); ``decode_text`` reads a labels file in whatever
encoding it was saved in."""

from __future__ import annotations

import json
import re
import unicodedata

from webapp.checkpoints.loaded import ModelLoadError
from webapp.messages import Message

# Where class names are kept: a list in output order, or a class_to_idx / idx_to_class map.
NAME_KEYS = ("classes", "class_names", "labels", "class_to_idx", "idx_to_class")


MAX_CLASS_NAME = 200


def class_names(value: object, source: str, what: str) -> list[str]:
    """Class names in output order from a list, a ``class_to_idx`` dict (name -> index)
    or an ``idx_to_class`` dict (index -> name); ``ModelLoadError`` naming ``source``
    when they are not usable."""
    names = value
    if isinstance(value, dict) and value:
        items = list(value.items())
        if all(isinstance(i, int) and not isinstance(i, bool) for _, i in items):
            by_index = {i: n for n, i in items}  # class_to_idx
        elif all(str(i).strip().isdigit() for i, _ in items):
            by_index = {int(str(i).strip()): n for i, n in items}  # idx_to_class
        else:
            raise ModelLoadError(Message(
                "%(what)s: %(source)s maps names to %(value)s; expected indices "
                "(class_to_idx) or names by index (idx_to_class)", what=what, source=source,
                value=repr(items[0][1])))
        if sorted(by_index) != list(range(len(by_index))):
            raise ModelLoadError(Message(
                "%(what)s: the indices in %(source)s are not 0 to %(last)s, each once",
                what=what, source=source, last=len(by_index) - 1))
        names = [by_index[i] for i in range(len(by_index))]
    if isinstance(names, tuple):
        names = list(names)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ModelLoadError(Message("%(what)s: %(source)s must be a list of class names, "
                                     "a class_to_idx or an idx_to_class mapping", what=what,
                                     source=source))
    names = [unicodedata.normalize("NFC", n).strip() for n in names]
    problem = None
    if len(names) < 2:
        problem = Message("%(what)s: %(source)s must name at least two classes")
    elif not all(names):
        problem = Message("%(what)s: %(source)s contains an empty name")
    elif any(len(n) > MAX_CLASS_NAME for n in names):
        problem = Message("%(what)s: %(source)s contains a name longer than %(limit)s "
                          "characters")
    elif any("\ufffd" in n for n in names):
        problem = Message("%(what)s: %(source)s contains a character that could not be read "
                          "(U+FFFD: the text was not sent as UTF-8); send the names as UTF-8 "
                          "text")
    elif any(unicodedata.category(c).startswith("C") for n in names for c in n):
        problem = Message("%(what)s: %(source)s contains control characters")
    elif len(set(names)) != len(names):
        problem = Message("%(what)s: %(source)s contains duplicate names (%(names)s)")
    if problem:
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ModelLoadError(Message(problem.msgid, what=what, source=source,
                                     limit=MAX_CLASS_NAME, names=", ".join(dupes[:5])))
    return names


# Between names written on one line: the comma, the full-width comma, the ideographic
# comma and the semicolons (ASCII and full-width).
NAME_SEPARATORS = re.compile("[,\uff0c\u3001;\uff1b]")


def split_names(text: str) -> list[str]:
    """Names typed or saved as text, in order, trimmed, empty ones dropped: one a line
    (any line break: LF, CRLF, CR), or, when everything is on one line, separated by
    ``,`` ``，`` ``、`` ``;`` or ``；``.  A name on a line of its own keeps its commas
    ("Tinca tinca, tench").  The one rule for every place a list of names is typed."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) == 1:
        lines = [part.strip() for part in NAME_SEPARATORS.split(lines[0]) if part.strip()]
    return lines


def parse_classes_field(text: str, what: str) -> list[str]:
    """The ``classes`` field: names in output order (``split_names``)."""
    return class_names(split_names(text), CLASSES_FIELD, what)


CLASSES_FIELD = Message("the classes field")


def parse_labels_file(data: bytes | str, what: str) -> list[str]:
    """A labels file in any common encoding (``decode_text``): a JSON list, a JSON
    class_to_idx / idx_to_class, a Hugging Face ``config.json`` (its ``id2label``), or
    names as ``split_names`` reads them (one a line)."""
    if isinstance(data, bytes):
        data, _ = decode_text(data, what)
    return _labels_from_text(data, what)


def read_labels_file(data: bytes, what: str) -> tuple[list[str], str]:
    """``parse_labels_file`` and the encoding the file was read in."""
    text, encoding = decode_text(data, what)
    return _labels_from_text(text, what), encoding


def _labels_from_text(data: str, what: str) -> list[str]:
    text = data.removeprefix("\ufeff").strip()
    if text[:1] in ("[", "{"):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ModelLoadError(Message(
                "%(what)s: the labels file looks like JSON but is not valid JSON "
                "(%(error)s); fix it, or write one name a line", what=what,
                error=str(exc))) from None
        if isinstance(value, dict) and isinstance(value.get("id2label"), dict):
            return class_names(value["id2label"], Message("the labels file's 'id2label'"),
                               what)
        return class_names(value, LABELS_FILE, what)
    return class_names(split_names(text), LABELS_FILE, what)


LABELS_FILE = Message("the labels file")


# Legacy encodings a labels file may be saved in, most likely first (a text that reads
# equally well in two of them is read in the first): Simplified Chinese Windows (GBK, read
# as its superset GB18030), Traditional Chinese (Big5), Japanese (Shift_JIS), Korean
# (EUC-KR), Western European Windows (cp1252).
LEGACY_ENCODINGS = ("gb18030", "big5", "shift_jis", "euc_kr", "cp1252")
ENCODING_NAMES = {"gb18030": "GBK (GB18030)", "big5": "Big5", "shift_jis": "Shift_JIS",
                  "euc_kr": "EUC-KR", "cp1252": "Windows-1252", "utf-16": "UTF-16",
                  "utf-16-le": "UTF-16", "utf-16-be": "UTF-16", "utf-32": "UTF-32"}
_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"),
         (b"\x00\x00\xfe\xff", "utf-32"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))
SAVE_AS_UTF8 = Message("open it in a text editor and save it as UTF-8 (Notepad: Save as, "
                       "Encoding: UTF-8), then send it again")


def decode_text(data: bytes, what: str) -> tuple[str, str]:
    """(text, encoding) of a labels file: UTF-8 with or without a byte order mark,
    UTF-16/32 (with a BOM, or UTF-16 without one when every other byte of its ASCII is
    zero), else the ``LEGACY_ENCODINGS`` reading made of the common characters of its
    script (``_commonness``; between equally good readings of a long text,
    charset-normalizer's language statistics decide, else the order of the list).  A
    file none of them reads cleanly is refused with "save it as UTF-8"; replacement
    characters (U+FFFD) are never produced."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return _strict(data, encoding, what), encoding.removesuffix("-sig")
    if len(data) >= 4 and data.count(b"\x00") >= len(data) // 4:  # UTF-16 without a BOM
        encoding = "utf-16-le" if data[1:2] == b"\x00" else "utf-16-be"
        return _strict(data, encoding, what), encoding
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    readings = {}
    for encoding in LEGACY_ENCODINGS:
        try:
            readings[encoding] = data.decode(encoding)
        except UnicodeDecodeError:
            continue
    scores = {encoding: _commonness(text, encoding) for encoding, text in readings.items()}
    best = max(scores.values(), default=0.0)
    if best < 0.9:
        raise ModelLoadError(Message("%(what)s: the labels file is not UTF-8 text and no "
                                     "common encoding reads it cleanly; %(advice)s",
                                     what=what, advice=SAVE_AS_UTF8))
    tied = [encoding for encoding in LEGACY_ENCODINGS if scores.get(encoding, 0) >= best - 0.02]
    encoding = tied[0]
    if len(tied) > 1 and sum(b > 127 for b in data) >= 64:
        # Long enough for charset-normalizer's language statistics to tell the tied
        # readings apart (on a few names they cannot: it is the order above then).
        from charset_normalizer import from_bytes

        ranked = [match.encoding for match in from_bytes(data, cp_isolation=tied)]
        encoding = next((e for e in ranked if e in tied), encoding)
    return readings[encoding], encoding


def _strict(data: bytes, encoding: str, what: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        raise ModelLoadError(Message("%(what)s: the labels file starts like %(encoding)s "
                                     "text but is not; %(advice)s", what=what,
                                     encoding=encoding.upper(), advice=SAVE_AS_UTF8)) from None


def _commonness(text: str, encoding: str) -> float:
    """The share of a reading's non-ASCII characters that are common in its script: the
    6,763 characters of GB2312 for GB18030, Big5's frequent characters (level 1) for
    Big5, kana and JIS level-1 kanji for Shift_JIS, KS X 1001 Hangul for EUC-KR,
    letters for cp1252.  A text in another encoding reads as rare characters."""
    others = [c for c in text if ord(c) > 127]
    if not others:
        return 1.0
    return sum(_common(c, encoding) for c in others) / len(others)


def _common(char: str, encoding: str) -> bool:
    if unicodedata.category(char)[0] in "CZ":
        return char in "\u3000"  # the ideographic space; controls never
    if unicodedata.category(char)[0] == "P" and encoding != "cp1252":
        return True  # full-width and CJK punctuation
    try:
        code = char.encode({"gb18030": "gb2312"}.get(encoding, encoding))
    except UnicodeEncodeError:
        return False
    if encoding == "gb18030":
        return True
    if encoding == "big5":
        return b"\xa4\x40" <= code <= b"\xc6\x7e"
    if encoding == "shift_jis":
        return 0x3040 <= ord(char) <= 0x30ff or b"\x88\x9f" <= code <= b"\x98\x72"
    if encoding == "euc_kr":
        return 0xac00 <= ord(char) <= 0xd7a3
    return char.isalpha()


def names_in(container: dict, what: str) -> tuple[list[str] | None, str | None]:
    """Class names kept in a file (``NAME_KEYS``, also under Lightning's hyper_parameters)."""
    for place in (container, container.get("hyper_parameters"), container.get("hparams")):
        if not isinstance(place, dict):
            continue
        for key in NAME_KEYS:
            if key in place and place[key] is not None:
                return class_names(place[key], f"the file's {key!r}", what), key
    return None, None


def imagenet_labels() -> list[str]:
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
