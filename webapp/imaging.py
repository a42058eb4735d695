"""Bytes from an upload -> a safe RGB ``PIL.Image``, or an ``ImageError`` that says, in
words a person understands, what is wrong with the file.

* Only an allow-list of formats is decoded (fewer decoders, fewer surprises).
* The pixel count is checked from the header, before any pixel is decoded.
* JPEGs are decoded straight at 1/2, 1/4 or 1/8 scale when the model needs fewer pixels.
* EXIF orientation is applied; every mode (palette, alpha, CMYK, 16-bit, float) becomes
  8-bit RGB, transparent areas composited on white.
* Every decode has a budget (``DecodeBudget``), spent before the expensive step can run
  away: Pillow parses headers in Python one small read at a time (a JPEG that is 19 MB
  of ``FF`` padding took 21 s), so the reads it makes are counted and timed; and a
  progressive JPEG's scans are counted before libjpeg sees them (each extra scan is one
  more pass over every block: 500,000 tiny scans would take an hour).  Over budget:
  ``ImageError`` 422 ``too_slow_to_decode``, in a fraction of a second.
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps

from webapp.config import setting
from webapp.messages import Message

try:  # HEIC/HEIF photos from phones, when pillow-heif is installed
    from pillow_heif import register_heif_opener

    register_heif_opener()
    _HEIF = ("HEIF",)
except ImportError:  # pragma: no cover - optional
    _HEIF = ()

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not grey pixels
# Image memory is kept for the next image (Pillow reads the same variable when it starts;
# here the settings table's default applies too): a freed block of a decoded photo is
# otherwise unmapped, and the next photo's pixels fault every page in again.
Image.core.set_blocks_max(setting("PILLOW_BLOCKS_MAX"))

# Formats we decode (JPEG's opener also returns MPO, how many phone cameras write JPEGs).
Image.init()
ALLOWED_FORMATS = tuple(
    f for f in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", *_HEIF) if f in Image.OPEN
)
MAX_SIDE = 65_535  # the longest side accepted, whatever the pixel count (JPEG's own limit)
FRIENDLY_FORMATS = "JPEG, PNG, WebP, GIF, BMP, TIFF, AVIF" + (", HEIC" if _HEIF else "")
# Reads (and seeks) Pillow may make on one upload.  Real files need tens to a few
# thousand (an 8000×6000 PNG: 855, an uncompressed TIFF: 2,280, a JPEG with 3,000 APP
# segments: 12,000); a file built of padding or empty chunks needs one per few bytes.
MAX_READS = 100_000
# Scans of one JPEG.  Encoders write 1 (baseline) to about 10 (progressive; 24 for CMYK),
# an MPO a few images of those; libjpeg decodes every scan over the whole image.
MAX_JPEG_SCANS = 100


@dataclass
class ImageError(Exception):
    """An upload that cannot be classified.  ``status`` is the HTTP status to answer."""

    status: int
    code: str
    message: str

    def __str__(self) -> str:
        return self.message


def _describe_non_image(data: bytes) -> str:
    """Name what a non-image file looks like, for the error message."""
    try:
        import puremagic

        matches = puremagic.magic_string(data[:4096])
        if matches:
            best = max(matches, key=lambda m: m.confidence)
            kind = best.mime_type or best.extension
            return Message(" (it looks like: %(kind)s)",
                           kind=f"{best.name.strip().rstrip('.')}, {kind}")
    except Exception:  # puremagic raises when it cannot tell; that is fine
        pass
    sample = data[:512]
    if sample and all(32 <= b < 127 or b in (9, 10, 13) for b in sample):
        return Message(" (it looks like plain text)")
    return ""


class DecodeBudget(io.BytesIO):
    """The upload as Pillow reads it, with a budget: at most ``reads`` reads and seeks
    and, with ``seconds``, a deadline checked at every read.  Pillow's header parsers
    and its feeding of the C decoders all go through these calls, so a file that is
    mostly padding, empty segments or chunks runs out of reads long before it runs
    out of bytes, whichever format's parser walks it."""

    def __init__(self, data: bytes, *, reads: int = MAX_READS,
                 seconds: float | None = None, deadline: float | None = None):
        """``seconds`` from now, or until ``deadline`` (``time.monotonic()``) when given:
        several images of one request share one (``seconds`` is then their budget)."""
        super().__init__(data)
        self._reads = reads
        if deadline is None and seconds is not None:
            deadline = time.monotonic() + seconds
        self._deadline = deadline
        self._seconds = seconds

    def _spend(self) -> None:
        self._reads -= 1
        if self._reads < 0:
            raise too_slow(Message("its structure needs more steps to read than any real "
                                   "image (it is mostly padding or empty segments)"))
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise too_slow(Message("decoding it would take longer than %(seconds)s s (the time "
                                   "all the images of one request may take together)",
                                   seconds=f"{self._seconds:g}"))

    def read(self, size=-1, /):
        self._spend()
        return super().read(size)

    def read1(self, size=-1, /):
        self._spend()
        return super().read1(size)

    def readinto(self, buffer, /):
        self._spend()
        return super().readinto(buffer)

    def readline(self, size=-1, /):
        self._spend()
        return super().readline(size)

    def seek(self, offset, whence=0, /):
        self._spend()
        return super().seek(offset, whence)


def too_slow(reason: str) -> ImageError:
    return ImageError(422, "too_slow_to_decode", Message(
        "The file was refused before decoding it: %(reason)s. Re-save it with an image "
        "editor or a camera app and send it again.", reason=reason))


def _check_jpeg_scans(data: bytes) -> None:
    """Count the JPEG's start-of-scan markers (``FF DA``: inside compressed data every
    ``FF`` byte is followed by ``00`` or a restart marker, so they only occur as
    markers or inside metadata, which only makes the count err on the high side)."""
    if data[:2] == b"\xff\xd8" and data.count(b"\xff\xda") > MAX_JPEG_SCANS:
        raise too_slow(Message("the JPEG has more than %(limit)s scans (progressive photos "
                               "have about 10; each one is decoded over the whole image)",
                               limit=MAX_JPEG_SCANS))


def open_image(data: bytes, *, max_pixels: int,
               budget: DecodeBudget | None = None) -> Image.Image:
    """Identify the format and check the size from the header; nothing is decoded yet.
    ``budget``: the file object to read ``data`` through (a default budget if None)."""
    if not data:
        raise ImageError(400, "empty_file", Message("The uploaded file is empty (0 bytes)."))
    _check_jpeg_scans(data)
    if budget is None:
        budget = DecodeBudget(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(budget, formats=ALLOWED_FORMATS)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(413, "too_many_pixels", Message(
            "The image has too many pixels (the limit is %(limit)s).",
            limit=f"{max_pixels:,}")) from None
    except Image.UnidentifiedImageError:
        raise _unidentified(data, budget) from None
    except Exception as exc:  # a decoder choking on a broken header
        raise ImageError(422, "unreadable_image", Message(
            "The image header could not be read: %(reason)s.", reason=str(exc))) from None
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError(422, "unreadable_image", Message("The image has no pixels."))
    if max(width, height) > MAX_SIDE:  # 1×50,000,000: 400 MB of row pointers alone
        raise ImageError(413, "too_many_pixels", Message(
            "The image is %(width)s×%(height)s pixels; no side may be longer than "
            "%(limit)s pixels. Please send a smaller image.", width=width, height=height,
            limit=f"{MAX_SIDE:,}"))
    if width * height > max_pixels:
        raise ImageError(413, "too_many_pixels", Message(
            "The image is %(width)s×%(height)s = %(pixels)s pixels; the limit is "
            "%(limit)s. Please send a smaller image.", width=width, height=height,
            pixels=f"{width * height:,}", limit=f"{max_pixels:,}"))
    return img


def _unidentified(data: bytes, budget: DecodeBudget) -> ImageError:
    """415 for anything that is not an image we accept, saying which of the two it is
    (the second look spends what is left of the same budget)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            budget.seek(0)
            other = Image.open(budget)  # any format Pillow knows
        fmt = other.format
    except Exception:  # ImageError too: out of budget, and not an image we accept
        fmt = None
    if fmt:
        return ImageError(415, "unsupported_format", Message(
            "%(format)s images are not accepted. Please send %(formats)s.", format=fmt,
            formats=FRIENDLY_FORMATS))
    return ImageError(415, "not_an_image", Message(
        "The file is not an image%(looks_like)s. Please send %(formats)s.",
        looks_like=_describe_non_image(data), formats=FRIENDLY_FORMATS))


def pixels_to_decode(data: bytes, *, max_pixels: int, min_side: int | None = None) -> int:
    """How many pixels ``load`` would decode for ``data``, from its header alone (a JPEG
    counts at the reduced scale ``load`` decodes it at); the header's own checks apply."""
    img = open_image(data, max_pixels=max_pixels)
    if min_side and img.format in ("JPEG", "MPO"):
        img.draft("RGB", (min_side, min_side))
    width, height = img.size
    return width * height


def load(data: bytes, *, max_pixels: int, min_side: int | None = None,
         seconds: float | None = None, deadline: float | None = None,
         gap: int | None = None) -> Image.Image:
    """Decode ``data`` into an 8-bit RGB image, upright per its EXIF orientation.
    ``seconds``: the most the decoding may take (``DecodeBudget``; the read and scan
    limits apply in any case), counted to ``deadline`` when several images share it.

    ``min_side``: the size the model will resize the shorter side to.  JPEGs are then
    decoded at the smallest 1/2, 1/4 or 1/8 scale that keeps both sides at least
    ``gap`` times that large (``Image.draft``; default ``DRAFT_GAP``), which is several
    times faster for phone photos; other formats are reduced by a whole factor right
    after decoding, keeping the same gap (``_reduce``).  The image says by how much
    (``info["scale"]``, with the size it had before, ``info["original_size"]``), so that
    the resize and the centre crop are placed where they fall on the full image
    (``preprocess_array``).
    """
    img = open_image(data, max_pixels=max_pixels,
                     budget=DecodeBudget(data, seconds=seconds, deadline=deadline))
    try:
        width, height = img.size  # as stored, before any reduced-scale decoding
        gap = gap or DRAFT_GAP
        if min_side and img.format in ("JPEG", "MPO"):
            img.draft("RGB", (gap * min_side, gap * min_side))
        img.seek(0)  # first frame of animations and multi-page files
        img.load()
        decoded = img.size
        scale = round(width / decoded[0])  # 1, 2, 4 or 8 (the draft's ceil(width / scale))
        out = to_rgb(_upright(img))
        if out.size != decoded:  # EXIF said the photo is on its side
            width, height = height, width
        out, factor = _reduce(out, min_side, gap)
        out.info["original_size"] = (width, height)
        out.info["scale"] = scale * factor
        return out
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(413, "too_many_pixels", Message(
            "The image is too large to decode on this server.")) from None
    except Exception as exc:  # truncated data, corrupt chunks, decoder errors
        reason = str(exc).strip() or type(exc).__name__
        raise ImageError(422, "unreadable_image", Message(
            "The %(format)s file is damaged or incomplete and could not be decoded "
            "(%(reason)s).", format=img.format, reason=reason) if img.format else Message(
            "The image file is damaged or incomplete and could not be decoded (%(reason)s).",
            reason=reason)) from None


# A reduced decode keeps the shorter side at least this many times the model's resize:
# a JPEG decoded at 1/2, 1/4 or 1/8 (its DCT scaling), another format box-reduced by a
# whole factor after decoding.  bench/decode_fidelity.py measured what each keeps of
# torchvision's answers (docs/speed.md): at 2x a probability moved by up to 0.026, at 4x
# a JPEG's by 0.007 to 0.012 and a box reduction's by 0.015; 6x keeps within 0.01.  The
# server's DECODE_GAP setting chooses another gap (speed for fidelity); its default
# (the settings table's) is the gap of every other caller.
DRAFT_GAP = setting("DECODE_GAP", {})


def _reduce(img: Image.Image, min_side: int | None, gap: int) -> tuple[Image.Image, int]:
    """Other formats cannot be decoded at a reduced scale by Pillow (PNG, WebP, TIFF,
    AVIF, HEIC decode whole), but a box reduction by a whole factor right after decoding
    (``Image.reduce``, a few ms) makes the model's antialiased resize much cheaper, as
    JPEG draft mode does for JPEGs.  The shorter side stays at least ``gap`` times
    ``min_side``, so the final resize still does the fine work.  Returns the image and
    the factor (1: not reduced)."""
    if not min_side:
        return img, 1
    factor = min(img.size) // (gap * min_side)
    return (img.reduce(factor), factor) if factor >= 2 else (img, 1)


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a damaged EXIF block does not spoil a good photo.
    In place: ``exif_transpose`` would otherwise copy every image, rotated or not (a
    second 150 MB for a 50-megapixel upload)."""
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:
        pass
    return img


def _composite_on_white(img: Image.Image) -> Image.Image:
    """Paste onto a white RGB canvas through the alpha channel: one RGB image more than
    the RGBA one, where ``alpha_composite`` needed three more."""
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, (0, 0), rgba)
    return background


def _scale_to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale -> 8-bit "L".

    I;16* holds 0..65535; "I" from a 16-bit PNG/TIFF also holds 0..65535 (and 0..255 data
    stays as it is); "F" is taken as 0..1 when it fits there, else as 0..255.  Converted
    a block of rows at a time, so a 50-megapixel image needs a few MB of float scratch
    space instead of several copies of itself in float64."""
    arr = np.asarray(img)
    if img.mode == "F":
        def prepare(block):
            return np.nan_to_num(block.astype(np.float64), nan=0.0, posinf=255.0,
                                 neginf=0.0)
        def in_unit_range(block):
            block = prepare(block)
            return block.min() >= 0.0 and block.max() <= 1.0

        unit = arr.size > 0 and all(in_unit_range(arr[rows]) for rows in _row_blocks(arr))
        factor, divisor = (255.0 if unit else 1.0), 1.0
    else:
        def prepare(block):
            return block.astype(np.float64)
        big = img.mode.startswith("I;16") or (arr.size and arr.max() > 255)
        factor, divisor = 1.0, (257.0 if big else 1.0)
    out = np.empty(arr.shape, dtype=np.uint8)
    for rows in _row_blocks(arr):
        block = prepare(arr[rows])
        if factor != 1.0:
            block *= factor
        if divisor != 1.0:
            block /= divisor
        out[rows] = np.clip(np.rint(block), 0, 255)
    return Image.fromarray(out, "L")


def _row_blocks(arr, pixels: int = 1 << 20):
    step = max(1, pixels // max(1, arr.shape[1] if arr.ndim > 1 else 1))
    for start in range(0, arr.shape[0], step):
        yield slice(start, start + step)


ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in img.info):
        return _composite_on_white(img)
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        return _scale_to_8bit(img).convert("RGB")
    if mode == "CMYK" and img.info.get("icc_profile"):
        try:  # print files: convert with their own profile, not the naive formula
            profile = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
            return ImageCms.profileToProfile(
                img, profile, ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
    if mode == "LAB":
        return ImageCms.profileToProfile(
            img, ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), outputMode="RGB"
        )
    return img.convert("RGB")  # 1, L, P, CMYK, YCbCr, HSV
