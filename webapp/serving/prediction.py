"""One prediction request's work, without HTTP: decode every upload safely, classify them
as one batch, and build the response body (docs/api.md)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from webapp import imaging
from webapp.messages import Message
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
           seconds: float | None = None, max_total_pixels: int | None = None,
           watch: Stopwatch | None = None,
           gap: int | None = None) -> tuple[list[Image.Image], list[float]]:
    """The uploads as images (``imaging.load``) and each one's decoding time (laps of
    ``watch``); an ``ImageError`` names the first bad file when there are several.

    The request has one budget for all its images: ``max_total_pixels`` pixels to decode,
    counted from the headers before any image is decoded, and ``seconds`` for all the
    decoding together.  ``gap``: how far large photos may be decoded at a reduced scale
    (``imaging.load``; the ``DECODE_GAP`` setting)."""
    watch = Stopwatch() if watch is None else watch
    deadline = None if seconds is None else time.monotonic() + seconds
    if max_total_pixels and len(uploads) > 1:
        total = 0
        for n, upload in enumerate(uploads):
            with _named(upload, n, len(uploads)):
                total += imaging.pixels_to_decode(upload.data, max_pixels=max_pixels,
                                                  min_side=min_side)
        if total > max_total_pixels:
            raise imaging.ImageError(413, "too_many_pixels", Message(
                "The %(count)s images of this request have %(pixels)s pixels to decode in "
                "all; the limit for one request is %(limit)s. Please send fewer or smaller "
                "images at a time.", count=len(uploads), pixels=f"{total:,}",
                limit=f"{max_total_pixels:,}"))
    images, decode_ms = [], []
    for n, upload in enumerate(uploads):
        with _named(upload, n, len(uploads)):
            images.append(imaging.load(upload.data, max_pixels=max_pixels,
                                       min_side=min_side, seconds=seconds,
                                       deadline=deadline, gap=gap))
        decode_ms.append(watch.lap("decode"))
    return images, decode_ms


@contextlib.contextmanager
def _named(upload: Upload, n: int, count: int):
    """An ``ImageError`` about one of several images says which one."""
    try:
        yield
    except imaging.ImageError as exc:
        if count > 1:
            exc.message = Message("Image %(number)s (%(file)s): %(reason)s",
                                  number=n + 1, file=upload.filename, reason=exc.message)
        raise


def classify(classifier: Classifier, uploads: list[Upload], k: int, *, max_pixels: int,
             seconds: float | None = None, watch: Stopwatch | None = None,
             max_total_pixels: int | None = None,
             names: Sequence[str] | None = None, gap: int | None = None) -> Classified:
    """``watch``: the request's stopwatch (its earlier laps are kept in ``timings_ms``;
    ``total`` is the time from its start to the body built); ``names``: what each class
    is called on the page (``display_label``), by index."""
    watch = Stopwatch() if watch is None else watch
    images, decode_ms = decode(uploads, max_pixels=max_pixels,
                               min_side=classifier.resize_size, seconds=seconds,
                               max_total_pixels=max_total_pixels, watch=watch, gap=gap)
    predictions, unknown, timings = classifier.answer(images, k, watch)
    share = len(images)
    results = [
        {
            "filename": upload.filename,
            "width": img.info.get("original_size", img.size)[0],
            "height": img.info.get("original_size", img.size)[1],
            "predictions": [p.as_dict(names) for p in preds],
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
