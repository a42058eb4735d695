"""Weight files made on the spot with random weights (nothing downloaded): ResNet18 as
torchvision publishes it, fine-tunes saved as checkpoints, and uploads built to explode
or to run code when loaded."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import torch
import torchvision

FRUIT = ["apple", "banana", "cherry"]
TOOLS = ["hammer", "saw", "drill", "wrench"]


def save_random_resnet18(path: Path, num_classes: int = 1000, seed: int = 0) -> Path:
    """A randomly initialised ResNet18 saved exactly as torchvision publishes weights."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def save_finetuned_resnet18(path: Path, classes: list[str], seed: int = 0,
                            input_size: int = 64, metrics: dict | None = None) -> Path:
    """A randomly initialised ResNet18 with a len(classes)-way head, saved as a
    checkpoint in format v1 (``model_loader.save_checkpoint``), the way a fine-tune is.
    (``model_loader`` imported here, not with this module: tests/conftest.py imports this
    module before it sets the session's environment, which the project's modules read.)"""
    import model_loader

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None, num_classes=len(classes))
    path.parent.mkdir(parents=True, exist_ok=True)
    return model_loader.save_checkpoint(path, model, arch="resnet18", classes=classes,
                                        input_size=input_size, metrics=metrics)


def deflate_bomb(path):
    """0.97 MB on disk, 954 MB of zeros once its zip records are inflated."""
    buf = io.BytesIO()
    torch.save({"fc.weight": torch.zeros(1000, 250_000), "fc.bias": torch.zeros(1000)}, buf)
    source = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
        for info in source.infolist():
            out.writestr(info, source.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)
    return path


def views_bomb(path):
    """A ResNet50 state_dict of 40 KB: every weight is a view of one number."""
    one = torch.zeros(1)
    state = torchvision.models.resnet50(num_classes=1000).state_dict()
    torch.save({k: one.expand(v.shape) if v.is_floating_point() else v
                for k, v in state.items()}, path)
    return path


class CreatesAFile:
    """A pickle whose __reduce__ would create a file when unpickled."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def hostile_files(tmp_path: Path, marker: Path) -> list[tuple[Path, str]]:
    """Checkpoints that would create ``marker`` when unpickled, in torch's zip format and
    as plain pickles, each with the words of its refusal."""
    zipped = tmp_path / "hostile.pt"
    torch.save({"format": "webapp-checkpoint/1", "arch": "resnet18",
                "state_dict": CreatesAFile(marker)}, zipped)  # torch's zip format
    legacy = tmp_path / "hostile-legacy.pt"
    legacy.write_bytes(pickle.dumps(CreatesAFile(marker), protocol=2))  # a plain pickle
    modern = tmp_path / "hostile-protocol4.pt"
    modern.write_bytes(pickle.dumps(CreatesAFile(marker), protocol=4))
    assert zipfile.is_zipfile(zipped)
    return [(zipped, "Python objects other than tensors"),
            (legacy, "Python objects other than tensors"),
            (modern, "Python objects other than tensors")]
