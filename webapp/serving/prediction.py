"""One prediction request's work, without HTTP: decode every upload safely, classify them
as one batch, and build the response body (GUIDE.md §2)."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from webapp.serving import imaging
from webapp.serving.classifier import Classifier
from webapp.serving.stopwatch import Stopwatch


@dataclass
class Upload:
    filename: str
    data: bytes


@dataclass
class Classified:
    """The response body, the decoded images and what each stage took (ms)."""

    body: dict
    images: list[Image.Image]
    decode_ms: list[float]
    timings: dict[str, float]


def _round(timings: dict) -> dict:
    return {key: round(value, 2) for key, value in timings.items()}


def decode(uploads: list[Upload], *, max_pixels: int, min_side: int,
           seconds: float | None = None, watch: Stopwatch | None = None,
           ) -> tuple[list[Image.Image], list[float]]:
    """The uploads as images (``imaging.load``, each within ``seconds``) and each one's
    decoding time (laps of ``watch``); an ``ImageError`` names the first bad file when
    there are several."""
    watch = Stopwatch() if watch is None else watch
    images, decode_ms = [], []
    for n, upload in enumerate(uploads):
        try:
            images.append(imaging.load(upload.data, max_pixels=max_pixels,
                                       min_side=min_side, seconds=seconds))
        except imaging.ImageError as exc:
            if len(uploads) > 1:
                exc.message = f"Image {n + 1} ({upload.filename}): {exc.message}"
            raise
        decode_ms.append(watch.lap("decode"))
    return images, decode_ms


def classify(classifier: Classifier, uploads: list[Upload], k: int, *, max_pixels: int,
             seconds: float | None = None, watch: Stopwatch | None = None) -> Classified:
    """``watch``: the request's stopwatch (its earlier laps are kept in ``timings_ms``);
    ``total`` is the time from its start to the body built."""
    watch = Stopwatch() if watch is None else watch
    images, decode_ms = decode(uploads, max_pixels=max_pixels,
                               min_side=classifier.resize_size, seconds=seconds,
                               watch=watch)
    predictions, unknown, timings = classifier.answer(images, k, watch)
    share = len(images)
    results = [
        {
            "filename": upload.filename,
            "width": img.info.get("original_size", img.size)[0],
            "height": img.info.get("original_size", img.size)[1],
            "predictions": [p.as_dict() for p in preds],
            "unknown": unknown[n],
            "timings_ms": _round({
                "decode": decode_ms[n],
                **{stage: ms / share for stage, ms in timings.items()},
                "total": decode_ms[n] + sum(timings.values()) / share,
            }),
        }
        for n, (upload, img, preds) in enumerate(zip(uploads, images, predictions))
    ]
    body: dict = {"model": classifier.info}
    if len(results) == 1:
        body.update(predictions=results[0]["predictions"], unknown=unknown[0])
    else:
        body["results"] = results
    watch.lap("postprocess")
    body["timings_ms"] = _round({**watch.ms, "total": watch.elapsed_ms()})
    return Classified(body, images, decode_ms, timings)
