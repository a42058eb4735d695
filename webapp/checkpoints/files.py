"""Reading a weights file without trusting it: what kind of file it is (from its bytes,
never its name), ``torch.load`` with ``weights_only=True`` and refusals in words for a
person (whole pickled models, TorchScript, NumPy values, damaged files), safetensors,
and tensors that claim more than the file holds."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import warnings
from pathlib import Path

from webapp.checkpoints.loaded import ModelLoadError
from webapp.messages import Message


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


SAVE_STATE_DICT = Message("save the weights with torch.save(model.state_dict(), 'model.pth') "
                          "and upload that with its class names")


def check_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise ModelLoadError(Message("%(what)s: no such file", what=what))
    if path.stat().st_size == 0:
        raise ModelLoadError(Message("%(what)s: the file is empty", what=what))


def sniff_kind(path: Path) -> str:
    """``pytorch``, ``torchscript``, ``safetensors``, ``onnx`` or ``unknown``, from the
    first bytes (an uploaded file's name proves nothing)."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(b"PK"):
        if _is_onnx_bundle(path):
            return "onnx"
        return "torchscript" if _is_torchscript(path) else "pytorch"
    if head[:1] == b"\x80":  # a pickle: torch.save's legacy format (or pickle.dump)
        return "pytorch"
    if len(head) > 8 and head[8:9] == b"{":
        size = int.from_bytes(head[:8], "little")  # safetensors: JSON header length
        if 2 <= size < path.stat().st_size:
            return "safetensors"
    if head[:1] == b"\x08":  # protobuf field 1 (ir_version): how every ONNX file starts
        return "onnx"
    return "unknown"


def _is_onnx_bundle(path: Path) -> bool:
    """A zip of an ONNX model and its external data file(s)."""
    names = zip_names(path) or []
    return any(n.lower().endswith(".onnx") for n in names) and not any(
        n.endswith("data.pkl") for n in names)


def _is_torchscript(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()[:10_000]
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def read_weights_file(path: str | os.PathLike, label: str | None = None) -> object:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, so
    a file that smuggles code in a pickle is refused before anything runs.  ``label``
    names the file in error messages (default: its path).  Messages say what the file
    is and what to do; they never quote torch's unpickler (its opcodes and its advice
    to turn the safety off)."""
    import torch

    path = Path(path)
    what = label or str(path)
    check_file(path, what)
    if sniff_kind(path) == "torchscript":
        raise ModelLoadError(Message(
            "%(what)s: this is a TorchScript archive (torch.jit.save); the server does not "
            "run TorchScript (it carries code). Instead, %(advice)s, or export the model to "
            "ONNX", what=what, advice=SAVE_STATE_DICT))
    other = other_kind(path)
    if other:
        raise ModelLoadError(Message("%(what)s: %(reason)s", what=what, reason=other))
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(SAFE_GLOBALS):
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for corrupt or unsafe files
        raise ModelLoadError(Message("%(what)s: %(reason)s", what=what,
                                     reason=_unreadable(path, exc))) from None


# Classes a training checkpoint may hold that are plain data, read without running
# anything of theirs (the unpickler makes the object and fills in its attributes):
# timm's train.py saves its command line, an argparse.Namespace, as "args".
SAFE_GLOBALS = [argparse.Namespace]


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff",
                  ".heic", ".avif")
TO_ONNX = Message("convert it to ONNX and upload the .onnx file with its class names (for "
                  "Keras and TensorFlow: pip install tf2onnx, then python -m tf2onnx.convert "
                  "--keras model.h5 --output model.onnx, or --saved-model DIR)")


def other_kind(path: Path) -> str | None:
    """What a file that is no PyTorch weights file is, from its first bytes or its zip
    directory, and what to send instead (None: it may be one)."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return Message("this is an HDF5 file (a Keras .h5 model or TensorFlow weights), not "
                       "a PyTorch or ONNX model; %(advice)s", advice=TO_ONNX)
    if head.startswith(b"\x93NUMPY"):
        return Message("this is a NumPy array file (.npy), not a model; save the model's "
                       "weights with torch.save(model.state_dict(), 'model.pth') and upload "
                       "that")
    if head[4:8] == b"TFL3":
        return Message("this is a TensorFlow Lite model (.tflite), which the server does not "
                       "run; %(advice)s", advice=TO_ONNX)
    if head.startswith(b"GGUF"):
        return Message("this is a GGUF file (a language model's format), not an image "
                       "classifier; upload a PyTorch state_dict, safetensors or ONNX image "
                       "classifier")
    if head.startswith(b"PK"):
        return _other_zip(path)
    return None


def zip_names(path: Path, limit: int = 10_000) -> list[str] | None:
    """The member names of a zip file (the first ``limit``), or None when it is none."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return [i.filename for i in archive.infolist()[:limit]]
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


def _other_zip(path: Path) -> str | None:
    """What a zip that torch.save did not write holds, and what to do with it."""
    names = zip_names(path)
    if names is None or any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        return None  # torch's own format (or damaged: torch.load says)
    files = [n for n in names if not n.endswith("/")]
    lowered = [n.lower() for n in files]
    images = sum(n.endswith(IMAGE_SUFFIXES) for n in lowered)
    if files and images >= len(files) / 2:
        return Message("this is a zip of %(images)s images (a dataset), not a model. To "
                       "train a model on pictures, use Teach (the admin area's Teach page "
                       "imports such a zip); to upload a model, send its weights file (.pth, "
                       ".pt, .safetensors or .onnx)", images=images)
    if any(n.endswith("saved_model.pb") for n in lowered):
        return Message("this is a TensorFlow SavedModel (zipped), not a PyTorch model; "
                       "%(advice)s", advice=TO_ONNX)
    if "config.json" in lowered and any(n.endswith(".weights.h5") for n in lowered):
        return Message("this is a Keras 3 model (.keras), not a PyTorch model; %(advice)s",
                       advice=TO_ONNX)
    if files and all(n.endswith(".npy") for n in lowered):
        return Message("this is a NumPy .npz archive, not a model; save the model's weights "
                       "with torch.save(model.state_dict(), 'model.pth') and upload that")
    if not files:
        return Message("this is an empty zip archive; upload the model file itself (.pth, "
                       ".pt, .safetensors, or an .onnx model zipped with its .onnx.data file)")
    shown = ", ".join(files[:5]) + (", ..." if len(files) > 5 else "")
    return Message("this is a zip archive that torch.save did not write (it holds "
                   "%(files)s); upload the model file itself (.pth, .pt, .safetensors, or an "
                   ".onnx model zipped with its .onnx.data file)", files=shown)


_MODEL_LIBRARIES = ("torch.nn.", "torchvision.", "timm.", "efficientnet", "__main__.",
                    "lightning", "pytorch_lightning", "transformers.")


def _unreadable(path: Path, exc: Exception) -> Message:
    """Why torch could not (or would not) read ``path``, in words for a person."""
    text = str(exc)
    found = re.search(r"GLOBAL\s+([\w.]+)", text, re.I)
    names = [found.group(1)] if found else []
    if not found and _starts_with(path, b"\x80"):  # a pickle torch's reader stops on
        names = _pickle_globals(path)
    if names:
        return _global_reason(names[0])
    if re.search(r"call reduce|create new object|persistent id", text):
        return _global_reason("")
    if "legacy .tar format" in text:
        return Message("it is in PyTorch's legacy .tar format, which cannot be read "
                       "safely; load it where you trust it and save model.state_dict() again")
    if "WeightsUnpickler" in text or isinstance(exc, pickle.UnpicklingError):
        if _starts_with(path, b"\x80"):
            return Message("it is a pickle that torch.save did not write (pickle.dump?), "
                           "which cannot be read safely, so it was not loaded. Instead, "
                           "%(advice)s", advice=SAVE_STATE_DICT)
        return Message("not a readable PyTorch weights file (damaged, or another kind of "
                       "file)%(looks)s", looks=_looks_like(path))
    if not (_starts_with(path, b"\x80") or _starts_with(path, b"PK")):  # torch said "(101)"
        return Message("not a readable PyTorch weights file (neither of the two formats "
                       "torch.save writes, a zip or a pickle)%(looks)s. Upload the model "
                       "file itself: what torch.save(model.state_dict(), 'model.pth') wrote, "
                       "a .safetensors file or an .onnx model", looks=_looks_like(path))
    return Message("not a readable PyTorch weights file: it is damaged or cut short (an "
                   "upload that stopped early, a disk error); save it again with "
                   "torch.save(model.state_dict(), 'model.pth'), or send it again%(looks)s",
                   looks=_looks_like(path))


def _global_reason(name: str) -> Message:
    """The refusal of a pickle that names ``name`` (a class or function to call)."""
    if name.startswith(_MODEL_LIBRARIES):
        return Message("this is a whole pickled model (torch.save(model)); loading it "
                       "would run code from the file (a pickle that could run code), so it "
                       "was not loaded. Instead, %(advice)s", advice=SAVE_STATE_DICT)
    if name.startswith("numpy"):
        return Message("it contains NumPy values (a metric saved as numpy.float64, say), "
                       "which cannot be read without running code from the file, so it was "
                       "not loaded. Save such values as plain numbers (float(x)) or leave "
                       "them out")
    return Message("it contains Python objects other than tensors (a pickle that could run "
                   "code), so it was not loaded. If it is a model, %(advice)s",
                   advice=SAVE_STATE_DICT)


# What a legacy torch.save pickle of tensors names: rebuilders, storages, OrderedDict.
_SAFE_PICKLE_GLOBALS = re.compile(r"torch\._utils\.\w+|torch\.\w+|collections\.OrderedDict")


def _pickle_globals(path: Path, limit: int = 1 << 20) -> list[str]:
    """Classes and functions a plain pickle would call (read by ``pickletools``, which
    runs nothing), other than torch's own tensor rebuilders; the first MB only."""
    import pickletools

    with open(path, "rb") as fh:
        data = fh.read(limit)
    names, strings = [], []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # noqa: BLE001 - a damaged or cut pickle: what was read so far
        pass
    return [n for n in names if not _SAFE_PICKLE_GLOBALS.fullmatch(n)]


def _starts_with(path: Path, prefix: bytes) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(prefix)) == prefix


def _looks_like(path: Path) -> str:
    """"; it looks like: JPEG image data" for a file that is not a weights file."""
    head = b""
    try:
        import puremagic

        with open(path, "rb") as fh:
            head = fh.read(4096)
        if head.startswith(b"PK"):  # torch's own format is a zip: no useful guess
            return ""
        matches = puremagic.magic_string(head)
        if matches:
            best = max(matches, key=lambda m: m.confidence)
            return Message("; it looks like: %(kind)s", kind=best.name.strip().rstrip("."))
    except Exception:  # puremagic raises when it cannot tell
        pass
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head[:512]):
        return Message("; it looks like plain text")
    return ""


def read_safetensors(path: Path, what: str) -> tuple[dict, dict]:
    """The tensors of a ``.safetensors`` file and its string metadata (where class
    names, ``arch``, ``input_size``, ``mean`` and ``std`` may be kept, as JSON)."""
    from safetensors import SafetensorError, safe_open

    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(Message("%(what)s: not a readable safetensors file (%(error)s)",
                                     what=what, error=first)) from None
    found = {}
    for key, value in metadata.items():
        try:
            found[key] = json.loads(value)
        except ValueError:
            found[key] = value
    return tensors, found


def check_storage(state_dict: dict, what: str) -> None:
    """The tensors are made of numbers the file holds: a state_dict whose tensors are
    views of a few values (stride 0, one storage shared by everything) claims a big model
    from a tiny file; it is not a trained model and is refused before anything is built.
    One tie (a weight shared by two layers) is allowed."""
    claimed, storages = 0, {}
    for tensor in state_dict.values():
        claimed += tensor.numel() * tensor.element_size()
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    held = sum(storages.values())
    if claimed > 2 * held + (1 << 20):
        raise ModelLoadError(Message(
            "%(what)s: its tensors claim %(claimed)s MB of weights but the file holds only "
            "%(held)s MB of numbers (the same few values repeated); this is not a trained "
            "model", what=what, claimed=f"{claimed / 2**20:.0f}", held=f"{held / 2**20:.1f}"))
