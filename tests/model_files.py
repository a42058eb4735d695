"""Model files as people have them, made here with random weights (nothing downloaded):
one for each row of the table in issue 13 ("bring your own checkpoint"), and the answer
the model gives in torch fp32 with the standard ImageNet preprocessing (torchvision's
transforms, not the server's code), to compare the server's with.

``ModelFiles(folder)`` writes each file on first use and keeps it for the session (a
ResNet18 file is 45 MB).  Most rows share one random ResNet18 with a 5-way head, saved
in different layouts: the server must find the same network in each, and its engine
cache (keyed by the weights) converts it once.
"""

from __future__ import annotations

import functools
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms

from tests.photos import real_photos

CLASSES = ["cat", "dog", "fox", "owl", "yak"]
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class ModelFile:
    """A file, the form fields a person sends with it, what the server must find."""

    row: str  # the words for it
    path: Path
    fields: dict  # classes / arch / input_size / mean / std form fields
    arch: str
    classes: list
    module: nn.Module | None = field(repr=False, default=None)  # the reference (fp32)
    labels: tuple[str, bytes] | None = None  # (file name, contents) of a labels file
    input_size: int = 224
    mean: tuple = IMAGENET[0]
    std: tuple = IMAGENET[1]


def random_model(arch: str, num_classes: int, seed: int) -> nn.Module:
    """A random network whose head is scaled so its scores differ like a trained one's:
    freshly initialised, MobileNetV3 gives every photo nearly equal scores (logits about
    1e-3 apart), where a top-1 would be a rounding, not a decision."""
    import model_loader

    torch.manual_seed(seed)
    module = torchvision.models.get_model(arch, weights=None, num_classes=num_classes).eval()
    with torch.inference_mode():
        logits = module(photo_batch())
    spread = float((logits - logits.mean(dim=1, keepdim=True)).std())
    with torch.no_grad():
        for key in model_loader.signature(arch).head:  # the head, found by the server's code
            module.get_parameter(key).mul_(2.0 / spread)
    return module


@functools.cache
def photo_pngs() -> list[tuple[str, bytes]]:
    """The real photos as PNG (lossless: the server and the reference see the same pixels)."""
    out = []
    for p in real_photos():
        buf = io.BytesIO()
        p.image.save(buf, "PNG")
        out.append((p.name, buf.getvalue()))
    return out


def photo_batch(input_size: int = 224, mean=IMAGENET[0], std=IMAGENET[1]) -> torch.Tensor:
    """The real photos through torchvision's ImageNet eval transform (the standard
    preprocessing), with a model's own size and statistics."""
    transform = transforms.Compose([
        transforms.Resize(round(input_size / 0.875)), transforms.CenterCrop(input_size),
        transforms.ToTensor(), transforms.Normalize(mean, std)])
    return torch.stack([transform(Image.open(io.BytesIO(data)).convert("RGB"))
                        for _, data in photo_pngs()])


def torch_answers(module: nn.Module, input_size: int = 224, mean=IMAGENET[0],
                  std=IMAGENET[1]) -> list[tuple[int, float]]:
    """(top-1 index, its softmax score) for every real photo: torch fp32, torchvision's
    ImageNet eval transform with this model's size and statistics."""
    with torch.inference_mode():
        probs = module.eval()(photo_batch(input_size, mean, std)).softmax(dim=1)
    top = probs.max(dim=1)
    return [(int(i), float(s)) for s, i in zip(top.values, top.indices)]


class ModelFiles:
    """Every accepted row of the table (``accepted()``) and every refused one."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ the shared model

    @functools.cached_property
    def resnet18(self) -> nn.Module:
        return random_model("resnet18", len(CLASSES), seed=13)

    @functools.cached_property
    def state_dict(self) -> dict:
        return self.resnet18.state_dict()

    def _save(self, name: str, obj) -> Path:
        path = self.folder / name
        if not path.exists():
            torch.save(obj, path)
        return path

    def _row(self, row, name, obj, fields=None, labels=None, **kw) -> ModelFile:
        defaults = {"arch": "resnet18", "classes": CLASSES, "module": self.resnet18}
        return ModelFile(row, self._save(name, obj), fields or {}, labels=labels,
                         **{**defaults, **kw})

    # ------------------------------------------------------------------ accepted rows

    @functools.cached_property
    def bare(self) -> ModelFile:
        """torch.save(model.state_dict()) of a fine-tuned ResNet18 + a classes field.
        (timm's resnet18 writes the same keys, so this is its row too.)"""
        return self._row("bare state_dict + classes field", "best_model.pth", self.state_dict,
                         {"classes": ", ".join(CLASSES)})

    @functools.cached_property
    def dataparallel(self) -> ModelFile:
        """The same with DataParallel's "module." keys + a labels file, one name a line."""
        return self._row("DataParallel 'module.' keys + labels file", "dp.pth",
                         {f"module.{k}": v for k, v in self.state_dict.items()},
                         labels=("labels.txt", ("\n".join(CLASSES) + "\n").encode()))

    @functools.cached_property
    def lightning(self) -> ModelFile:
        """PyTorch Lightning: weights under "state_dict" with the LightningModule's
        "model." prefix, optimizer states beside + a JSON-list labels file."""
        return self._row(
            "Lightning checkpoint + JSON labels file", "epoch=3-step=40.ckpt",
            {"state_dict": {f"model.{k}": v for k, v in self.state_dict.items()},
             "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.01}]}],
             "lr_schedulers": [], "epoch": 3, "global_step": 40,
             "hyper_parameters": {"lr": 0.01, "num_classes": 5}},
            labels=("labels.json", json.dumps(CLASSES).encode()))

    @functools.cached_property
    def tutorial(self) -> ModelFile:
        """The tutorial dict, class_to_idx inside (no field needed)."""
        optimizer = torch.optim.SGD(self.resnet18.parameters(), lr=0.01, momentum=0.9)
        return self._row(
            "tutorial dict with class_to_idx", "checkpoint.pth",
            {"model_state_dict": self.state_dict, "optimizer_state_dict":
             optimizer.state_dict(), "epoch": 12, "loss": 0.31,
             "class_to_idx": {name: i for i, name in enumerate(CLASSES)}})

    @functools.cached_property
    def v1_without_format(self) -> ModelFile:
        return self._row("v1-like dict without 'format'", "v1-like.pt",
                         {"arch": "resnet18", "classes": CLASSES, "state_dict": self.state_dict})

    @functools.cached_property
    def compiled(self) -> ModelFile:
        """torch.compile's "_orig_mod." keys + a class_to_idx labels file."""
        return self._row(
            "torch.compile '_orig_mod.' keys + class_to_idx labels file", "compiled.pth",
            {f"_orig_mod.{k}": v for k, v in self.state_dict.items()},
            labels=("class_to_idx.json",
                    json.dumps({name: i for i, name in enumerate(CLASSES)}).encode()))

    @functools.cached_property
    def safetensors(self) -> ModelFile:
        """A .safetensors file with its class names in the metadata."""
        from safetensors.torch import save_file

        path = self.folder / "model.safetensors"
        if not path.exists():
            save_file({k: v.contiguous() for k, v in self.state_dict.items()}, str(path),
                      metadata={"classes": json.dumps(CLASSES)})
        return ModelFile("safetensors with classes in its metadata", path, {}, "resnet18",
                         CLASSES, self.resnet18)

    @functools.cached_property
    def onnx(self) -> ModelFile:
        """An ONNX export (free batch) + a classes field, at 160 px with its own mean/std:
        the preprocessing fields are what the server feeds it."""
        path = self.folder / "model.onnx"
        if not path.exists():
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript-based exporter's notices
                torch.onnx.export(self.resnet18, (torch.zeros(1, 3, 160, 160),), str(path),
                                  dynamo=False, input_names=["pixels"],
                                  output_names=["scores"],
                                  dynamic_axes={"pixels": {0: "n"}, "scores": {0: "n"}})
        return ModelFile("ONNX export + classes field", path,
                         {"classes": "\n".join(CLASSES), "input_size": "160",
                          "mean": "0.5, 0.5, 0.5", "std": "0.25, 0.25, 0.25"},
                         "onnx", CLASSES, self.resnet18, input_size=160,
                         mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))

    @functools.cached_property
    def mobilenet(self) -> ModelFile:
        """MobileNetV3 with a 3-way head, bare, + a classes field (arch detected)."""
        module = random_model("mobilenet_v3_large", 3, seed=5)
        return ModelFile("MobileNetV3 3-class bare state_dict + classes field",
                         self._save("mobilenet.pth", module.state_dict()),
                         {"classes": "red,green,blue"}, "mobilenet_v3_large",
                         ["red", "green", "blue"], module)

    def accepted(self) -> list[ModelFile]:
        return [self.bare, self.dataparallel, self.lightning, self.tutorial,
                self.v1_without_format, self.compiled, self.safetensors, self.onnx,
                self.mobilenet]

    # ------------------------------------------------------------------ refused rows

    @functools.cached_property
    def whole_model(self) -> Path:
        return self._save("whole-model.pth", self.resnet18)

    @functools.cached_property
    def quantized(self) -> Path:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized = torch.ao.quantization.quantize_dynamic(
                random_model("resnet18", 5, seed=13), {nn.Linear}, dtype=torch.qint8)
            return self._save("quantized.pth", quantized.state_dict())

    @functools.cached_property
    def torchscript(self) -> Path:
        import warnings

        path = self.folder / "scripted.pt"
        if not path.exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.jit.save(torch.jit.trace(self.resnet18, torch.zeros(1, 3, 64, 64)), path)
        return path
