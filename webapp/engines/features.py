"""A torch model answering its last feature map beside its logits: what the builder
exports (the ONNX network's second output, for heatmaps) and what ``ENGINE=torch`` runs."""

from __future__ import annotations

import torch
from torch import nn


class NoFeatureMap(ValueError):
    """The network has no N×C×H×W feature map to take heatmaps (and open-set features) from."""


class WithFeatures(nn.Module):
    """``module`` answering ``(logits, features)``: the feature map of ``layer`` as a
    second output.  The hook hands a copy on to the rest of the network, so later
    in-place ops cannot change the map we return; it is removed after every pass, so the
    wrapped module keeps no hooks."""

    def __init__(self, module: nn.Module, layer: nn.Module):
        super().__init__()
        self.model = module
        self.layer = layer
        # A new module starts in training mode; the ONNX exporter restores the wrapper's
        # mode on everything inside it afterwards, so the wrapper takes the model's.
        self.train(module.training)

    def forward(self, x):
        captured = []

        def keep(mod, args, output):
            captured.append(output)
            return output.clone()

        handle = self.layer.register_forward_hook(keep)
        try:
            logits = self.model(x)
        finally:
            handle.remove()
        return logits, captured[-1]


def find_target_layer(module: nn.Module, input_size: int) -> tuple[str, nn.Module]:
    """The last module (in the order forward passes finish) whose output is an N×C×H×W
    tensor with H, W ≥ 2, found with one probe forward pass on a blank image: the final
    convolutional features right before global pooling (``layer4`` for ResNets,
    ``features`` for torchvision's EfficientNet/MobileNet/DenseNet, the head activation
    ``_swish`` for the bundled EfficientNet-Lite0)."""

    seen: list[tuple[str, nn.Module]] = []

    def record(name):
        def hook(mod, args, output):
            if torch.is_tensor(output) and output.dim() == 4 and min(output.shape[2:]) >= 2:
                seen.append((name, mod))

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in module.named_modules() if n]
    try:
        with torch.inference_mode():
            module(torch.zeros(1, 3, input_size, input_size))
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise NoFeatureMap("the model has no convolutional feature map")
    return seen[-1]
