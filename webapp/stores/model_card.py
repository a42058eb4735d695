"""A model's card for taking it away: what it is (classes, architecture), how to feed it
(the preprocessing), how good it was (its metrics) and where it came from, as JSON and as
a README.  Goes with the downloaded checkpoint and ONNX file (``webapp.views.admin.
downloads``).  No Flask, no torch."""

from __future__ import annotations

import json

from webapp.engines.artefacts import ModelCard

CARD_FORMAT = "offline-classifier-model-card/1"


def describe(entry: dict, card: ModelCard, files: dict[str, str]) -> dict:
    """The card of a model: ``entry`` is its line in the model list (the registry's
    metadata, or the built-in model's), ``card`` what its engine was built from, ``files``
    the names its downloads get."""
    source = ("built in" if entry.get("builtin")
              else "trained on this server" if entry.get("trained_from") else "uploaded")
    return {
        "format": CARD_FORMAT,
        "id": entry["id"],
        "name": entry.get("name") or card.name,
        "arch": card.arch,
        "classes": list(card.labels),
        "num_classes": card.num_classes,
        "preprocessing": {
            "input_size": card.input_size, "resize": card.resize_size,
            "mean": list(card.mean), "std": list(card.std),
            "steps": ("RGB, shorter side resized to `resize` (bilinear, antialiased), "
                      "centre crop of `input_size`, scaled to 0..1, then (x - mean) / std; "
                      "channels first (N, 3, H, W)"),
        },
        "metrics": entry.get("metrics") or card.metrics or {},
        "unknown_detection": bool(card.openset),
        "provenance": {
            "source": source,
            "file_kind": entry.get("kind") or card.kind,
            "original_filename": entry.get("original_filename"),
            "uploaded": entry.get("uploaded"),
            "created": entry.get("created") or card.created,
            "trained_from": entry.get("trained_from"),
            "version": entry.get("version") or card.version,
            "sha256": entry.get("sha256"),
        },
        "files": files,
        "onnx": {"input": "input", "outputs": _onnx_outputs(card)},
    }


def _onnx_outputs(card: ModelCard) -> list[str]:
    return ["logits", "features"] if card.cam else ["logits"]


def readme(described: dict) -> str:
    """The card as a README (Markdown) for people."""
    prep = described["preprocessing"]
    classes = described["classes"]
    shown = ", ".join(classes[:30]) + (f", … ({len(classes)} in all)" if len(classes) > 30
                                       else "")
    metrics = "\n".join(f"- {key}: {value}" for key, value in described["metrics"].items()
                        if not isinstance(value, list | dict)) or "- none recorded"
    prov = described["provenance"]
    files = described["files"]
    return f"""# {described['name']}

Image classifier `{described['id']}`: {described['arch']}, {described['num_classes']} classes,
{prov['source']}{f" (from the dataset {prov['trained_from'].get('dataset')})"
                  if prov.get('trained_from') else ''}.

## Classes (output order)

{shown}

## Preprocessing

{prep['steps']}: input size {prep['input_size']} px, resize {prep['resize']} px,
mean {prep['mean']}, std {prep['std']}.

## Metrics

{metrics}

## Files

- `{files.get('checkpoint', '-')}`: PyTorch checkpoint (format v1: weights, classes,
  preprocessing); upload it to another offline-classifier server as it is, or read it
  with `load_checkpoint`.
- `{files['onnx']}`: ONNX, fp32; input `input` (N, 3, {prep['input_size']},
  {prep['input_size']}), output `logits` (N, {described['num_classes']}); softmax gives
  the probabilities. Upload it with its class names to serve it.
- `{files['card']}`: this card as JSON.

## Where it came from

- version (sha256 of the weights file, 12 hex digits): {prov['version']}
- file kind: {prov['file_kind']}; created: {prov['created'] or '-'}; uploaded:
  {prov['uploaded'] or '-'}

```json
{json.dumps({k: described[k] for k in ('arch', 'num_classes', 'preprocessing')}, indent=1)}
```
"""
