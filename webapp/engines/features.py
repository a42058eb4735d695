"""A torch model answering its last feature map beside its logits: what the builder
exports (the ONNX network's second output, for heatmaps) and what ``ENGINE=torch`` runs."""

from __future__ import annotations

from torch import nn


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
