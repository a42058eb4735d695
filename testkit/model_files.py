"""Model files as people have them, made here with random weights (nothing downloaded):
one for each row of the table of accepted and refused files (docs/admin.md), and the answer
the model gives in torch fp32 with the standard ImageNet preprocessing (torchvision's
transforms, not the server's code), to compare the server's with.

``ModelFiles(folder)`` writes each file on first use and keeps it for the session (a
ResNet18 file is 45 MB).  Most rows share one random ResNet18 with a 5-way head, saved
in different layouts: the server must find the same network in each, and its engine
cache (keyed by the weights) converts it once.  ``ACCEPTED`` names the accepted rows;
``TORCH_WORDS`` are the words of torch's that no refusal may quote.
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

from testkit.photos import real_photos

CLASSES = ["cat", "dog", "fox", "owl", "yak"]
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# The accepted rows, by their names in ``ModelFiles`` (what the tests parametrize over).
ACCEPTED = ["bare", "dataparallel", "lightning", "tutorial", "v1_without_format", "compiled",
            "safetensors", "onnx", "mobilenet", "dynamic_quantized", "dropout_head", "mlp_head",
            "prefixed", "hugging_face", "timm", "onnx_external", "onnx_pixels"]

# Words of torch's unpickler that must never reach a person: its opcodes, its globals
# and its advice to turn the safety off.
TORCH_WORDS = ("weights_only", "operand", "GLOBAL", "WeightsUnpickler", "allowlist",
               "add_safe_globals")


class HuggingFaceLogits(nn.Module):
    """A transformers image classifier answering its logits, as torchvision's do."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).logits


class PixelsNHWC(nn.Module):
    """A network that takes uint8 (N, H, W, 3) pixels and normalises them itself (what
    an exporter for phones or browsers writes)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.register_buffer("mean", torch.tensor(IMAGENET[0]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(IMAGENET[1]).view(1, 3, 1, 1) * 255)

    def forward(self, pixels):
        x = pixels.permute(0, 3, 1, 2).float()
        return self.module((x - self.mean) / self.std)


class PixelValues(nn.Module):
    """``PixelsNHWC`` fed torchvision's transform with mean 0 and std 1/255 (pixel
    values as floats): the reference answers of the uint8 model."""

    def __init__(self, wrapped: PixelsNHWC):
        super().__init__()
        self.wrapped = wrapped

    def forward(self, x):
        pixels = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        return self.wrapped(pixels)


def _export(module: nn.Module, path: Path, example: torch.Tensor) -> None:
    """ONNX with a free batch dimension (the TorchScript-based exporter, which needs no
    extra package)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False,
                          input_names=["pixels"], output_names=["scores"],
                          dynamic_axes={"pixels": {0: "n"}, "scores": {0: "n"}})


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


@functools.cache
def large_jpegs() -> list[tuple[str, bytes]]:
    """The real photos as a phone sends them: enlarged to a shorter side of 2000 px
    (bicubic, with mild sensor-like noise), JPEG quality 90 -- what the server decodes at
    a reduced scale."""
    import numpy as np

    rng = np.random.default_rng(7)
    out = []
    for p in real_photos():
        w, h = p.image.size
        s = 2000 / min(w, h)
        big = np.asarray(p.image.resize((round(w * s), round(h * s)),
                                        Image.Resampling.BICUBIC), np.float32)
        big = np.clip(big + rng.normal(0, 4, big.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(big).save(buf, "JPEG", quality=90)
        out.append((f"{p.name}-2000px", buf.getvalue()))
    return out


def photo_batch(input_size: int = 224, mean=IMAGENET[0], std=IMAGENET[1],
                photos=None) -> torch.Tensor:
    """The real photos (``photo_pngs()`` unless given) through torchvision's ImageNet eval
    transform (Pillow's full decode, the standard preprocessing), with a model's own
    size and statistics."""
    transform = transforms.Compose([
        transforms.Resize(round(input_size / 0.875)), transforms.CenterCrop(input_size),
        transforms.ToTensor(), transforms.Normalize(mean, std)])
    return torch.stack([transform(Image.open(io.BytesIO(data)).convert("RGB"))
                        for _, data in (photos or photo_pngs())])


def torch_answers(module: nn.Module, input_size: int = 224, mean=IMAGENET[0],
                  std=IMAGENET[1], photos=None) -> list[tuple[int, float]]:
    """(top-1 index, its softmax score) for every real photo: torch fp32, torchvision's
    ImageNet eval transform with this model's size and statistics."""
    with torch.inference_mode():
        probs = module.eval()(photo_batch(input_size, mean, std, photos)).softmax(dim=1)
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

    @functools.cached_property
    def dynamic_quantized(self) -> ModelFile:
        """The dynamic quantization recipe: quantize_dynamic(model, {nn.Linear},
        dtype=torch.qint8), torch.save(q.state_dict(), 'quantized.pth'): the head's int8
        weights are dequantized, so the reference is the network with those weights."""
        import copy
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized = torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(self.resnet18), {nn.Linear}, dtype=torch.qint8)
        reference = copy.deepcopy(self.resnet18)
        weight, bias = quantized.fc._packed_params._weight_bias()
        with torch.no_grad():
            reference.fc.weight.copy_(weight.dequantize())
            reference.fc.bias.copy_(bias)
        return self._row("dynamically quantized state_dict + classes field", "quantized.pth",
                         quantized.state_dict(), {"classes": ",".join(CLASSES)},
                         module=reference.eval())

    @functools.cached_property
    def dropout_head(self) -> ModelFile:
        """The tutorial head: fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(512, n))
        (keys fc.1.*) + a full-width-comma classes field."""
        module = random_model("resnet18", 5, seed=21)
        module.fc = nn.Sequential(nn.Dropout(0.5), module.fc)
        return self._row("Sequential(Dropout, Linear) head + 'cat，dog，…' field",
                         "dropout-head.pth", module.eval().state_dict(),
                         {"classes": "，".join(CLASSES)}, module=module)

    @functools.cached_property
    def mlp_head(self) -> ModelFile:
        """An MLP head: Linear, ReLU, Dropout, Linear (keys fc.0.*, fc.3.*) + a labels
        file saved in GBK (Simplified Chinese Windows' Notepad)."""
        torch.manual_seed(22)
        module = random_model("resnet18", 5, seed=22)
        module.fc = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Dropout(0.3),
                                  nn.Linear(256, 5))
        with torch.inference_mode():
            logits = module.eval()(photo_batch())
        with torch.no_grad():  # scores that differ like a trained model's (random_model)
            module.fc[3].weight.mul_(2.0 / float((logits - logits.mean(1, True)).std()))
        labels = "\r\n".join(["猫", "狗", "狐狸", "猫头鹰", "牦牛"]).encode("gbk")
        return self._row("MLP head (fc.0, fc.3) + GBK labels file", "mlp-head.pth",
                         module.eval().state_dict(), labels=("labels.txt", labels),
                         classes=["猫", "狗", "狐狸", "猫头鹰", "牦牛"], module=module)

    @functools.cached_property
    def prefixed(self) -> ModelFile:
        """A whole model under a package's own name (a bundled weights.pth: every key
        starts with 'backbone.') + a UTF-8 labels file with a BOM and CRLF."""
        labels = ("\ufeff" + "\r\n".join(CLASSES) + "\r\n").encode("utf-8")
        return self._row("every key under 'backbone.' + UTF-8 BOM labels file", "weights.pth",
                         {f"backbone.{k}": v for k, v in self.state_dict.items()},
                         labels=("labels.txt", labels))

    @functools.cached_property
    def hugging_face(self) -> ModelFile:
        """Hugging Face ResNetForImageClassification (save_pretrained: model.safetensors)
        with its config.json as the labels file (id2label)."""
        from transformers import ResNetConfig, ResNetForImageClassification

        folder = self.folder / "hf-resnet"
        torch.manual_seed(23)
        config = ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2],
                              hidden_sizes=[64, 128, 256, 512], num_labels=5,
                              id2label=dict(enumerate(CLASSES)),
                              label2id={c: i for i, c in enumerate(CLASSES)})
        model = ResNetForImageClassification(config).eval()
        module = HuggingFaceLogits(model)
        with torch.inference_mode():
            spread = float(module(photo_batch()).std())
        with torch.no_grad():
            model.classifier[1].weight.mul_(2.0 / spread)
        if not (folder / "model.safetensors").exists():
            model.save_pretrained(folder)
        return ModelFile("Hugging Face ResNet safetensors + config.json as labels",
                         folder / "model.safetensors", {}, "resnet18", CLASSES, module,
                         labels=("config.json", (folder / "config.json").read_bytes()))

    @functools.cached_property
    def timm(self) -> ModelFile:
        """timm's train.py checkpoint: its args (an argparse.Namespace), the optimizer,
        the trained weights and the EMA weights (preferred: the reference)."""
        import argparse

        ema = random_model("resnet18", 5, seed=24)
        args = argparse.Namespace(model="resnet18", num_classes=5, lr=0.05, epochs=30,
                                  img_size=None, input_size=None, mean=None, std=None,
                                  model_ema=True, model_ema_decay=0.9998, data_dir="/data")
        optimizer = torch.optim.SGD(self.resnet18.parameters(), lr=0.05)
        return self._row(
            "timm train.py checkpoint (args, state_dict_ema) + classes field",
            "timm-model_best.pth.tar",
            {"epoch": 29, "arch": "resnet", "state_dict": self.state_dict,
             "optimizer": optimizer.state_dict(), "version": 2, "args": args,
             "state_dict_ema": ema.state_dict(), "metric": 91.5},
            {"classes": "cat;dog;fox;owl;yak"}, module=ema)

    @functools.cached_property
    def onnx_external(self) -> ModelFile:
        """An ONNX model with its weights in model.onnx.data (what torch.onnx.export
        writes for large models), zipped together; + a UTF-16 labels file."""
        import zipfile

        import onnx

        folder = self.folder / "onnx-external"
        path = self.folder / "model-onnx.zip"
        if not path.exists():
            folder.mkdir(exist_ok=True)
            single = folder / "single.onnx"
            _export(self.resnet18, single, torch.zeros(1, 3, 224, 224))
            onnx.save_model(onnx.load(single), folder / "model.onnx",
                            save_as_external_data=True, all_tensors_to_one_file=True,
                            location="model.onnx.data", size_threshold=1024)
            with zipfile.ZipFile(path, "w") as archive:
                for name in ("model.onnx", "model.onnx.data"):
                    archive.write(folder / name, name)
        labels = ("\n".join(CLASSES) + "\n").encode("utf-16")
        return ModelFile("ONNX + external data (zip of both) + UTF-16 labels file", path, {},
                         "onnx", CLASSES, self.resnet18, labels=("labels.txt", labels))

    @functools.cached_property
    def onnx_pixels(self) -> ModelFile:
        """An ONNX model taking uint8 (N, H, W, 3) pixels and normalising them itself:
        served with mean 0 and std 1/255 (the batch holds the pixel values)."""
        path = self.folder / "pixels.onnx"
        wrapped = PixelsNHWC(self.resnet18)
        if not path.exists():
            _export(wrapped, path, torch.zeros(1, 224, 224, 3, dtype=torch.uint8))
        return ModelFile("ONNX taking uint8 NHWC pixels + classes field", path,
                         {"classes": ",".join(CLASSES)}, "onnx", CLASSES,
                         PixelValues(wrapped), mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3)

    def accepted(self) -> list[ModelFile]:
        return [getattr(self, row) for row in ACCEPTED]

    # ------------------------------------------------------------------ refused rows

    @functools.cached_property
    def whole_model(self) -> Path:
        return self._save("whole-model.pth", self.resnet18)

    @functools.cached_property
    def static_quantized(self) -> Path:
        """Eager-mode static quantization (fuse, prepare, calibrate, convert): the
        convolutions themselves are int8 and fused."""
        import warnings

        path = self.folder / "static-quantized.pth"
        if not path.exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = torchvision.models.quantization.resnet18(weights=None, quantize=False,
                                                                 num_classes=5).eval()
                model.fuse_model()
                model.qconfig = torch.ao.quantization.get_default_qconfig("x86")
                torch.ao.quantization.prepare(model, inplace=True)
                model(photo_batch())
                torch.ao.quantization.convert(model, inplace=True)
                torch.save(model.state_dict(), path)
        return path

    @functools.cached_property
    def keras(self) -> Path:
        """A Keras .h5 (HDF5) file, named .pth."""
        import h5py
        import numpy as np

        path = self.folder / "keras-model.pth"
        if not path.exists():
            with h5py.File(path, "w") as fh:
                fh.attrs["keras_version"] = "2.15.0"
                fh.attrs["backend"] = "tensorflow"
                fh.create_dataset("model_weights/dense/kernel:0", data=np.zeros((4, 2)))
        return path

    @functools.cached_property
    def images_zip(self) -> Path:
        """A zip of training pictures called model.pth."""
        import zipfile

        path = self.folder / "images-model.pth"
        if not path.exists():
            with zipfile.ZipFile(path, "w") as archive:
                for n, (name, data) in enumerate(photo_pngs()[:4]):
                    archive.writestr(f"{CLASSES[n % 2]}/{name}.png", data)
        return path

    @functools.cached_property
    def optimizer_state(self) -> Path:
        """torch.save(optimizer.state_dict()) by mistake."""
        optimizer = torch.optim.Adam(self.resnet18.parameters(), lr=1e-3)
        return self._save("optimizer.pth", optimizer.state_dict())

    @functools.cached_property
    def other_network(self) -> Path:
        """A network that is no torchvision classifier (a small CNN of one's own)."""
        torch.manual_seed(3)
        net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5))
        return self._save("my-cnn.pth", net.state_dict())

    def refused(self) -> list[tuple[str, Path, dict, tuple[str, ...]]]:
        """(what it is, the file, the fields sent, words the refusal must hold: the kind
        of file and the next step)."""
        return [
            ("whole pickled model", self.whole_model, {},
             ("whole pickled model", "torch.save(model.state_dict()")),
            ("TorchScript", self.torchscript, {}, ("TorchScript", "model.state_dict()")),
            ("static-quantized state_dict", self.static_quantized, {},
             ("static-quantized", "upload the fp32 weights")),
            ("Keras .h5", self.keras, {}, ("HDF5", "Keras", "tf2onnx")),
            ("zip of images", self.images_zip, {}, ("zip of 4 images", "Teach")),
            ("optimizer state", self.optimizer_state, {},
             ("optimizer's state", "save model.state_dict()")),
            ("another network", self.other_network, {"classes": ",".join(CLASSES)},
             ("not those of a supported architecture", "export it to ONNX")),
        ]

    @functools.cached_property
    def torchscript(self) -> Path:
        import warnings

        path = self.folder / "scripted.pt"
        if not path.exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.jit.save(torch.jit.trace(self.resnet18, torch.zeros(1, 3, 64, 64)), path)
        return path
