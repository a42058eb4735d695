"""Other libraries' names for torchvision's networks: Hugging Face ``transformers``'
``ResNetForImageClassification`` and ``ViTForImageClassification`` keep the same tensors
as torchvision's ResNet and ViT under other key names (ViT's query, key and value apart);
``from_other_libraries`` renames them, so the usual detection and strict fit apply.  Their
``config.json`` is a labels file (its ``id2label``: ``webapp.checkpoints.labels``)."""

from __future__ import annotations

import re

_RESNET = (
    (r"resnet\.embedder\.embedder\.convolution\.weight", "conv1.weight"),
    (r"resnet\.embedder\.embedder\.normalization\.(\w+)", "bn1.{0}"),
    (r"resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.weight",
     "layer{0+1}.{1}.conv{2+1}.weight"),
    (r"resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.(\w+)",
     "layer{0+1}.{1}.bn{2+1}.{3}"),
    (r"resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.weight",
     "layer{0+1}.{1}.downsample.0.weight"),
    (r"resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.(\w+)",
     "layer{0+1}.{1}.downsample.1.{2}"),
    (r"classifier\.1\.(weight|bias)", "fc.{0}"),
)

# ViT: the names transformers 4 writes, and those of transformers 5.
_VIT_LAYER = r"vit\.(?:encoder\.layer|layers)\.(\d+)\."
_VIT = (
    (r"vit\.embeddings\.cls_token", "class_token"),
    (r"vit\.embeddings\.position_embeddings", "encoder.pos_embedding"),
    (r"vit\.embeddings\.patch_embeddings\.projection\.(weight|bias)", "conv_proj.{0}"),
    (_VIT_LAYER + r"(?:attention\.attention\.(query|key|value)|attention\.([qkv])_proj)\."
     r"(weight|bias)", "encoder.layers.encoder_layer_{0}.self_attention.in_proj_{3}:{1}{2}"),
    (_VIT_LAYER + r"(?:attention\.output\.dense|attention\.o_proj)\.(weight|bias)",
     "encoder.layers.encoder_layer_{0}.self_attention.out_proj.{1}"),
    (_VIT_LAYER + r"(?:intermediate\.dense|mlp\.fc1)\.(weight|bias)",
     "encoder.layers.encoder_layer_{0}.mlp.0.{1}"),
    (_VIT_LAYER + r"(?:output\.dense|mlp\.fc2)\.(weight|bias)",
     "encoder.layers.encoder_layer_{0}.mlp.3.{1}"),
    (_VIT_LAYER + r"layernorm_before\.(weight|bias)", "encoder.layers.encoder_layer_{0}.ln_1.{1}"),
    (_VIT_LAYER + r"layernorm_after\.(weight|bias)", "encoder.layers.encoder_layer_{0}.ln_2.{1}"),
    (r"vit\.layernorm\.(weight|bias)", "encoder.ln.{0}"),
    (r"classifier\.(weight|bias)", "heads.head.{0}"),
)

LAYOUTS = (("Hugging Face ResNet", "resnet.embedder.embedder.convolution.weight", _RESNET),
           ("Hugging Face ViT", "vit.embeddings.cls_token", _VIT))


def from_other_libraries(state_dict: dict) -> tuple[dict, str | None]:
    """``state_dict`` in torchvision's key names when it is in one of ``LAYOUTS`` (every
    key renamed, or it is left as it is), and the layout's name (None: not renamed)."""
    for name, marker, rules in LAYOUTS:
        if marker not in state_dict:
            continue
        renamed = _rename(state_dict, rules)
        if renamed is not None:
            return renamed, name
    return state_dict, None


def _rename(state_dict: dict, rules) -> dict | None:
    import torch

    out, parts = {}, {}
    compiled = [(re.compile(pattern), target) for pattern, target in rules]
    for key, tensor in state_dict.items():
        found = next(((m, target) for pattern, target in compiled
                      if (m := pattern.fullmatch(key))), None)
        if found is None:
            return None
        new = _fill(found[1], [g or "" for g in found[0].groups()])
        if ":" in new:  # one of a ViT layer's query, key and value: joined below
            new, part = new.split(":")
            parts.setdefault(new, {})[part[0]] = tensor
        else:
            out[new] = tensor
    for new, pieces in parts.items():
        if sorted(pieces) != ["k", "q", "v"]:
            return None
        out[new] = torch.cat([pieces["q"], pieces["k"], pieces["v"]])
    return out


def _fill(target: str, groups: list[str]) -> str:
    """``"layer{0+1}.{1}"`` with the match's groups (``+1``: a 0-based stage index as
    torchvision's 1-based ``layerN``); ``query``/``key``/``value`` become q/k/v."""
    def value(match):
        index, plus = int(match.group(1)), match.group(2)
        text = groups[index]
        if plus:
            return str(int(text) + 1)
        return {"query": "q", "key": "k", "value": "v"}.get(text, text)

    return re.sub(r"\{(\d)(\+1)?\}", value, target)
