"""A corpus of odd, exotic and broken image files, generated here (nothing downloaded),
shared by the in-process API tests, the real-server tests and bench/.

``corpus()`` gives well over 300 cases: every format and pixel mode Pillow can write,
truncation at many offsets, corrupted headers and chunks, pixel bombs in several formats,
"legal" images just under the pixel limit, multi-frame and animated files, 1×1 and
30000×1 images, polyglots, and wrong file names and content types.  ``basic()`` is a
small subset for quick in-process runs.  Every case says which statuses are acceptable;
what never is: a 5xx, a hang, a crashed worker.

Deterministic: the same cases, byte for byte, on every run (seeded).
"""

from __future__ import annotations

import functools
import io
import random
import struct
import zipfile
import zlib
from dataclasses import dataclass

from PIL import Image

from testkit.photos import photo

OK = frozenset({200})
REFUSED = frozenset({415})
DAMAGED = frozenset({200, 413, 415, 422})  # a cut/corrupt file may decode, or not
BOMB = frozenset({413})
ANY_4XX = frozenset({200, 400, 413, 415, 422})

# Formats the server accepts (webapp.imaging.ALLOWED_FORMATS, MPO being a JPEG).
ACCEPTED = {"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF"}
MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
         "I", "I;16", "I;16B", "I;16L", "F")
CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif",
                 "WEBP": "image/webp", "BMP": "image/bmp", "TIFF": "image/tiff",
                 "AVIF": "image/avif", "HEIF": "image/heif"}


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expect: frozenset = ANY_4XX
    filename: str | None = None  # the multipart file name (default: name)
    content_type: str = "application/octet-stream"
    raw: bool = False  # send as the request body instead of a multipart field

    @property
    def upload_name(self) -> str:
        return self.name if self.filename is None else self.filename


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


@functools.cache
def _base() -> Image.Image:
    return photo("chelsea").image.resize((96, 64))


def _convert(image: Image.Image, mode: str) -> Image.Image:
    try:
        return image.convert(mode)
    except ValueError:
        if mode.startswith("I;16"):
            return Image.frombytes(mode, image.size,
                                   bytes(image.convert("L").tobytes()) * 2)
        return Image.new(mode, image.size)


def _chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF if crc is None else crc
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_header_only(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    """A PNG that claims ``width``×``height`` and holds almost no data (a pixel bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (PNG_SIGNATURE + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _chunk(b"IEND", b""))


def _png_with(chunks: list[tuple[bytes, bytes]], size=(8, 8)) -> bytes:
    """A valid 8×8 RGB PNG with extra chunks before IDAT."""
    width, height = size
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"".join(b"\x00" + b"\x80" * (width * 3) for _ in range(height))
    body = b"".join(_chunk(kind, data) for kind, data in chunks)
    return (PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + body
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def _zlib_bomb(size: int) -> bytes:
    return zlib.compress(b"\x00" * size, 9)


def _jpeg_with_sof_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame size in a baseline JPEG's SOF0 marker."""
    at = data.index(b"\xff\xc0")
    out = bytearray(data)
    out[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(out)


def _gif_header_only(width: int, height: int) -> bytes:
    """GIF89a with a huge logical screen and one 1×1 frame."""
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0)
            + b"\x00\x00\x00\xff\xff\xff"
            + b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
            + b"\x02\x02\x44\x01\x00\x3b")


def _gif_min(code_size: int, data: bytes = b"\x44\x01") -> bytes:
    """A 1×1 GIF with the given LZW minimum code size and image data."""
    blocks = b"".join(bytes([len(data[i:i + 255])]) + data[i:i + 255]
                      for i in range(0, len(data), 255))
    return (b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
            + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + bytes([code_size]) + blocks
            + b"\x00\x3b")


def _bmp_header_only(width: int, height: int, bits: int = 24) -> bytes:
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 14 + 40) + header + b"\x00" * 16


def _tiff_header_only(width: int, height: int) -> bytes:
    """Little-endian TIFF, one IFD, uncompressed RGB, a strip that is not there."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1),
               (262, 3, 1, 2), (273, 4, 1, 8), (277, 3, 1, 3), (278, 4, 1, height),
               (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, kind, count, value) for tag, kind, count, value in entries
    ) + b"\x00\x00\x00\x00"
    return b"II*\x00" + struct.pack("<I", 8 + 16) + b"\x00" * 16 + ifd


def _webp_lossless_header(width: int, height: int) -> bytes:
    bits = (width - 1) | ((height - 1) << 14)
    payload = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 16
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def _flip_bytes(data: bytes, rng: random.Random, count: int, start: int = 8) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        out[rng.randrange(min(start, len(out) - 1), len(out))] = rng.randrange(256)
    return bytes(out)


# --------------------------------------------------------------------------- groups


def basic() -> list[Case]:
    """The small corpus: pixel modes, truncations and corruptions of the main formats,
    non-images, a bomb, extreme shapes, a refused format."""
    rng = random.Random(1234)
    base = _base()
    cases = []
    modes = {"1": "PNG", "L": "PNG", "P": "PNG", "RGB": "PNG", "RGBA": "PNG", "LA": "PNG",
             "I": "PNG", "I;16": "PNG", "CMYK": "JPEG", "YCbCr": "JPEG", "LAB": "TIFF",
             "F": "TIFF", "PA": "PNG", "RGBX": "TIFF"}
    for mode, fmt in modes.items():
        img = _convert(base, mode)
        try:
            cases.append(Case(f"mode-{mode}.{fmt.lower()}", _encode(img, fmt), OK))
        except (OSError, KeyError, ValueError):
            cases.append(Case(f"mode-{mode}.tiff", _encode(img, "TIFF"), OK))
    for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"):
        data = _encode(base, fmt)
        for fraction in (0.02, 0.3, 0.6, 0.9):
            cut = max(1, int(len(data) * fraction))
            cases.append(Case(f"truncated-{fmt}-{fraction}", data[:cut], DAMAGED))
        cases.append(Case(f"corrupt-{fmt}", _flip_bytes(data, rng, 20), DAMAGED))
    cases += [
        Case("zero.jpg", b"", frozenset({400})),
        Case("random.jpg", random.Random(5).randbytes(5000), REFUSED),
        Case("doc.pdf", b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", REFUSED),
        Case("html.png", b"<!doctype html><script>alert(1)</script>", REFUSED),
        Case("bomb.png", png_header_only(200_000, 200_000), BOMB),
        Case("one-pixel.png", _encode(Image.new("RGB", (1, 1), "red"), "PNG"), OK),
        Case("wide.png", _encode(Image.new("RGB", (30000, 1), "red"), "PNG"), OK),
        Case("tall.png", _encode(Image.new("L", (1, 30000), 9), "PNG"), OK),
        Case("icon.ico", _encode(base, "ICO"), REFUSED),
    ]
    return cases


def every_format_and_mode() -> list[Case]:
    """Every (format, mode) Pillow can write: accepted formats answer, others get 415."""
    base = _base()
    cases = []
    Image.init()
    for fmt in sorted(Image.SAVE):
        if fmt in ("WMF", "BUFR", "GRIB", "HDF5"):  # need a handler to write
            continue
        for mode in MODES:
            img = _convert(base, mode)
            if fmt in ("ICNS",):
                img = img.resize((32, 32))
            try:
                data = _encode(img, fmt)
            except Exception:  # this format cannot store this mode
                continue
            expect = OK if fmt in ACCEPTED else REFUSED
            cases.append(Case(f"format-{fmt}-{mode}", data, expect,
                              content_type=CONTENT_TYPES.get(fmt, "image/x-" + fmt.lower())))
    return cases


def truncations() -> list[Case]:
    base = photo("coffee").image.resize((120, 80))
    cases = []
    sources = {"JPEG": _encode(base, "JPEG", quality=90),
               "JPEG-progressive": _encode(base, "JPEG", progressive=True),
               "PNG": _encode(base, "PNG"), "GIF": _encode(base, "GIF"),
               "WEBP": _encode(base, "WEBP"), "BMP": _encode(base, "BMP"),
               "TIFF": _encode(base, "TIFF"), "TIFF-lzw": _encode(base, "TIFF",
                                                                  compression="tiff_lzw"),
               "AVIF": _encode(base, "AVIF"), "HEIF": _encode(base, "HEIF")}
    for name, data in sources.items():
        offsets = {1, 2, 4, 8, 16, 32, len(data) - 1}
        offsets |= {int(len(data) * f) for f in (0.1, 0.25, 0.5, 0.75, 0.9, 0.97)}
        for cut in sorted(o for o in offsets if 0 < o < len(data)):
            cases.append(Case(f"truncated-{name}-at-{cut}", data[:cut], DAMAGED))
    return cases


def corruptions() -> list[Case]:
    rng = random.Random(42)
    base = _base()
    cases = []
    for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF"):
        data = _encode(base, fmt)
        for n, count in enumerate((1, 4, 32, 256)):
            cases.append(Case(f"flipped-{fmt}-{n}", _flip_bytes(data, rng, count), DAMAGED))
        junk = data[:len(data) // 3] + rng.randbytes(len(data) // 3) + data[2 * len(data) // 3:]
        cases.append(Case(f"spliced-{fmt}", junk, DAMAGED))
        cases.append(Case(f"doubled-{fmt}", data + data, DAMAGED))
    png = _encode(base, "PNG")
    ihdr = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    good_idat = zlib.compress(b"".join(b"\x00" + b"\x80" * 24 for _ in range(8)))
    cases += [
        Case("png-bad-ihdr-crc", PNG_SIGNATURE + _chunk(b"IHDR", ihdr, crc=0)
             + _chunk(b"IDAT", good_idat) + _chunk(b"IEND", b""), DAMAGED),
        Case("png-zero-width", png_header_only(0, 8), DAMAGED),
        Case("png-bad-depth", png_header_only(8, 8, depth=7), DAMAGED),
        Case("png-bad-colour-type", png_header_only(8, 8, colour=5), DAMAGED),
        Case("png-idat-not-zlib", PNG_SIGNATURE + _chunk(b"IHDR", ihdr)
             + _chunk(b"IDAT", b"not zlib at all") + _chunk(b"IEND", b""), DAMAGED),
        Case("png-no-iend", png[:-12], DAMAGED),
        Case("png-chunk-length-huge", PNG_SIGNATURE + _chunk(b"IHDR", ihdr)
             + struct.pack(">I", 0x7FFFFFF0) + b"IDAT" + good_idat, DAMAGED),
        Case("png-many-text-chunks", _png_with([(b"tEXt", b"k\x00" + b"v" * 50)] * 2000),
             DAMAGED),
        Case("png-iccp-zlib-bomb", _png_with([(b"iCCP", b"p\x00\x00" + _zlib_bomb(64 << 20))]),
             DAMAGED),
        Case("png-ztxt-zlib-bomb", _png_with([(b"zTXt", b"k\x00\x00" + _zlib_bomb(64 << 20))]),
             DAMAGED),
        Case("png-idat-zlib-bomb-small-header", PNG_SIGNATURE + _chunk(b"IHDR", ihdr)
             + _chunk(b"IDAT", _zlib_bomb(64 << 20)) + _chunk(b"IEND", b""), DAMAGED),
        Case("png-unknown-critical-chunk", _png_with([(b"ABCD", b"x" * 10)]), DAMAGED),
    ]
    jpeg = _encode(base, "JPEG")
    no_sos = jpeg[:jpeg.index(b"\xff\xda")] + b"\xff\xd9"
    cases += [
        Case("jpeg-without-scan", no_sos, DAMAGED),
        Case("jpeg-sof-zero-size", _jpeg_with_sof_size(jpeg, 0, 0), DAMAGED),
        Case("jpeg-many-app-markers", jpeg[:2] + (b"\xff\xe5" + struct.pack(">H", 18)
                                                 + b"x" * 16) * 3000 + jpeg[2:], DAMAGED),
        Case("jpeg-huge-comment", jpeg[:2] + b"\xff\xfe\xff\xff" + b"c" * 65533 + jpeg[2:],
             DAMAGED),
        Case("jpeg-marker-soup", b"\xff\xd8" + b"\xff" * 5000 + b"\xff\xd9", DAMAGED),
        Case("jpeg-broken-exif", _encode(base, "JPEG", exif=b"Exif\x00\x00II*\x00\xff\xff"
                                         b"\xff\x7f" + b"\x00" * 40), DAMAGED),
        Case("jpeg-exif-orientation-9", _encode(base, "JPEG", exif=_exif({0x0112: 9})),
             DAMAGED),
        Case("jpeg-cmyk-broken-icc", _encode(base.convert("CMYK"), "JPEG",
                                             icc_profile=b"\x00" * 200), DAMAGED),
        Case("jpeg-rgb-garbage-icc", _encode(base, "JPEG",
                                             icc_profile=random.Random(3).randbytes(3000)),
             DAMAGED),
    ]
    cases += [
        Case("gif-lzw-code-size-12", _gif_min(12), DAMAGED),
        Case("gif-lzw-code-size-0", _gif_min(0), DAMAGED),
        Case("gif-lzw-garbage", _gif_min(2, b"\xff" * 200), DAMAGED),
        Case("gif-no-frames", b"GIF89a\x08\x00\x08\x00\x00\x00\x00\x3b", DAMAGED),
        Case("gif87a-header-only", b"GIF87a\x01\x00\x01\x00", DAMAGED),
    ]
    cases += [
        Case("bmp-negative-height", _encode(base, "BMP")[:22] + struct.pack("<i", -64)
             + _encode(base, "BMP")[26:], DAMAGED),
        Case("bmp-bad-bit-depth", _bmp_header_only(8, 8, bits=13), DAMAGED),
        Case("bmp-pixel-offset-past-end", _encode(base, "BMP")[:10] + struct.pack("<I", 10**8)
             + _encode(base, "BMP")[14:], DAMAGED),
        Case("bmp-rle8-garbage", _encode(base.convert("P"), "BMP")[:30] + struct.pack("<I", 1)
             + _encode(base.convert("P"), "BMP")[34:], DAMAGED),
        Case("tiff-strip-past-end", _tiff_header_only(64, 64), DAMAGED),
        Case("tiff-ifd-loop", b"II*\x00\x08\x00\x00\x00\x01\x00" + struct.pack("<HHII", 256, 4,
             1, 8) + struct.pack("<I", 8), DAMAGED),
        Case("tiff-unknown-compression", _encode(base, "TIFF").replace(
            struct.pack("<HHII", 259, 3, 1, 1), struct.pack("<HHII", 259, 3, 1, 60000), 1),
            DAMAGED),
        Case("tiff-jpeg-compressed-broken", _flip_bytes(_encode(base, "TIFF",
             compression="jpeg"), random.Random(9), 40, start=64), DAMAGED),
        Case("webp-riff-size-lies", b"RIFF\xff\xff\xff\x7fWEBP" + _encode(base, "WEBP")[12:],
             DAMAGED),
        Case("webp-vp8x-animated-no-frames", b"RIFF" + struct.pack("<I", 22) + b"WEBPVP8X"
             + struct.pack("<I", 10) + b"\x02\x00\x00\x00\x07\x00\x00\x07\x00\x00", DAMAGED),
        Case("heif-bad-box-size", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00heicmif1"
             + b"\xff\xff\xff\xffmeta" + b"\x00" * 64, DAMAGED),
    ]
    return cases


def _exif(tags: dict[int, int]) -> bytes:
    exif = Image.Exif()
    for tag, value in tags.items():
        exif[tag] = value
    return exif.tobytes()


def pixel_bombs() -> list[Case]:
    """Headers that claim far more pixels than the limit (413 before any decoding), and
    real images just under it (they decode: memory must stay bounded)."""
    jpeg = _encode(_base(), "JPEG")
    cases = [
        Case("bomb-png-100k-square", png_header_only(100_000, 100_000), BOMB),
        Case("bomb-png-2g-wide", png_header_only(2**31 - 1, 2), BOMB),
        Case("bomb-png-16bit", png_header_only(20_000, 20_000, depth=16), BOMB),
        Case("bomb-gif-65535", _gif_header_only(65535, 65535), BOMB),
        Case("bomb-bmp-100k", _bmp_header_only(100_000, 100_000), BOMB),
        Case("bomb-bmp-negative-100k", _bmp_header_only(100_000, -100_000), BOMB),
        Case("bomb-tiff-100k", _tiff_header_only(100_000, 100_000), BOMB),
        Case("bomb-jpeg-65500", _jpeg_with_sof_size(jpeg, 65500, 65500), BOMB),
        Case("bomb-webp-16383", _webp_lossless_header(16383, 16383), BOMB),
        Case("bomb-png-zlib-compressed-8k", _big_png(10_000, 10_000, "L"), BOMB),
    ]
    cases += [  # just under MAX_IMAGE_PIXELS (50,000,000): legal, heavy to decode
        Case("heavy-png-L-7000", _big_png(7000, 7000, "L"), OK),
        Case("heavy-png-16bit-7000", _big_png(7000, 7000, "I;16"), OK),
        Case("heavy-png-rgba-7000", _big_png(7000, 7000, "RGBA"), OK),
        Case("heavy-gif-7000", _encode(Image.new("P", (7000, 7000)), "GIF"), OK),
        Case("heavy-tiff-float-5000", _encode(Image.new("F", (5000, 5000), 0.5), "TIFF",
                                              compression="tiff_adobe_deflate"), OK),
    ]
    return cases


@functools.cache
def _big_png(width: int, height: int, mode: str) -> bytes:
    img = Image.new(mode, (width, height))
    return _encode(img, "PNG", compress_level=9)


def animations() -> list[Case]:
    base = _base()
    frames = [base.rotate(angle) for angle in range(0, 360, 36)]
    small = [Image.new("P", (4, 4), n % 256) for n in range(600)]
    cases = [
        Case("animated.gif", _encode(frames[0], "GIF", save_all=True,
                                     append_images=frames[1:], duration=50, loop=0), OK),
        Case("animated.png", _encode(frames[0], "PNG", save_all=True,
                                     append_images=frames[1:5]), OK),
        Case("animated.webp", _encode(frames[0], "WEBP", save_all=True,
                                      append_images=frames[1:5]), OK),
        Case("multipage.tiff", _encode(frames[0], "TIFF", save_all=True,
                                       append_images=frames[1:3]), OK),
        Case("two-frames.mpo", _encode(frames[0], "MPO", save_all=True,
                                       append_images=frames[1:2]), OK),
        Case("600-frames.gif", _encode(small[0], "GIF", save_all=True,
                                       append_images=small[1:]), OK),
        Case("frames-of-different-sizes.gif", _encode(
            base, "GIF", save_all=True, append_images=[base.resize((500, 500)),
                                                        base.resize((2, 2))],
            disposal=2), OK),
        Case("animated.avif", _encode(frames[0], "AVIF", save_all=True,
                                      append_images=frames[1:3]), OK),
    ]
    gif = cases[0].data
    cases.append(Case("animated-gif-truncated-in-frame-3", gif[: int(len(gif) * 0.35)],
                      DAMAGED))
    return cases


def extreme_shapes() -> list[Case]:
    cases = []
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"), ("WEBP", "webp"),
                     ("BMP", "bmp"), ("TIFF", "tif")):
        cases.append(Case(f"1x1.{ext}", _encode(Image.new("RGB", (1, 1), "green"), fmt), OK))
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"), ("BMP", "bmp"),
                     ("TIFF", "tif")):
        cases.append(Case(f"30000x1.{ext}", _encode(Image.new("RGB", (30000, 1), "red"),
                                                    fmt), OK))
        cases.append(Case(f"1x30000.{ext}", _encode(Image.new("RGB", (1, 30000), "blue"),
                                                    fmt), OK))
    cases.append(Case("16383x1.webp", _encode(Image.new("RGB", (16383, 1)), "WEBP"), OK))
    cases.append(Case("2x25000000.png", png_header_only(2, 25_000_000, depth=1, colour=0),
                      BOMB))  # under MAX_IMAGE_PIXELS, but a side over 65,535
    return cases


def polyglots() -> list[Case]:
    base = _base()
    jpeg, png, gif = _encode(base, "JPEG"), _encode(base, "PNG"), _encode(base, "GIF")
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("evil.class", b"\xca\xfe\xba\xbe" + b"\x00" * 100)
    html = b"<html><script>alert(document.cookie)</script></html>"
    return [
        Case("gifar.gif", gif + zipped.getvalue(), OK),
        Case("png-then-html.png", png + html, OK),
        Case("jpeg-then-zip.jpg", jpeg + zipped.getvalue(), OK),
        Case("jpeg-php-comment.jpg", jpeg[:2] + b"\xff\xfe\x00\x1d<?php system($_GET[c]); ?>"
             + jpeg[2:], OK),
        Case("jpeg-xss-exif.jpg", _encode(base, "JPEG", exif=_exif_text(
            '<img src=x onerror=alert(1)>"\'')), OK),
        Case("pdf-then-jpeg.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + jpeg, REFUSED),
        Case("jpeg-then-pdf.jpg", jpeg + b"%PDF-1.4\n1 0 obj<<>>endobj\n%%EOF", OK),
        Case("gif-js-polyglot.gif", b"GIF89a/*\x00\x01\x00\x00\x00\x00*/=alert(1);//"
             + b"\x3b", DAMAGED),
        Case("svg-with-script.svg", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)">'
             b'<script>alert(2)</script></svg>', REFUSED, content_type="image/svg+xml"),
        Case("xml-entity-bomb.svg", b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa">'
             b'<!ENTITY b "&a;&a;&a;&a;">]><svg>&b;</svg>', REFUSED,
             content_type="image/svg+xml"),
        Case("png-signature-then-html.png", PNG_SIGNATURE + html, DAMAGED),
        Case("zip.png", zipped.getvalue(), REFUSED),
        Case("elf.jpg", b"\x7fELF\x02\x01\x01" + b"\x00" * 200, REFUSED),
        Case("utf16-text.jpg", "just text".encode("utf-16"), REFUSED),
    ]


def _exif_text(text: str) -> bytes:
    exif = Image.Exif()
    exif[0x010E] = text  # ImageDescription
    return exif.tobytes()


def names_and_types() -> list[Case]:
    """Wrong extensions, lying content types, hostile file names, raw bodies."""
    base = _base()
    jpeg, png = _encode(base, "JPEG"), _encode(base, "PNG")
    cases = [
        Case("jpeg-named-png", jpeg, OK, filename="photo.png", content_type="image/gif"),
        Case("png-named-exe", png, OK, filename="setup.exe",
             content_type="application/x-msdownload"),
        Case("text-as-jpeg", b"hello\n" * 100, REFUSED, filename="cat.jpg",
             content_type="image/jpeg"),
        Case("path-traversal-name", jpeg, OK, filename="../../../../etc/passwd"),
        Case("windows-path-name", jpeg, OK, filename="C:\\Windows\\system32\\cat.jpg"),
        Case("long-name", jpeg, OK, filename="a" * 5000 + ".jpg"),
        Case("unicode-name", jpeg, OK, filename="Katze 😀 ü.jpg"),
        Case("no-name", jpeg, frozenset({200, 400}), filename=""),
        Case("dot-name", png, OK, filename="."),
        Case("html-name", png, OK, filename="<script>alert(1)</script>.png"),
        Case("raw-jpeg-body", jpeg, OK, content_type="image/jpeg", raw=True),
        Case("raw-png-body-says-jpeg", png, OK, content_type="image/jpeg", raw=True),
        Case("raw-text-body-says-png", b"nope" * 10, REFUSED, content_type="image/png",
             raw=True),
        Case("raw-empty-body", b"", frozenset({400}), content_type="image/jpeg", raw=True),
        Case("raw-jpeg-as-octet-stream", jpeg, frozenset({400}), raw=True),
        Case("raw-jpeg-as-json", jpeg, frozenset({400}), content_type="application/json",
             raw=True),
        Case("raw-form-urlencoded", b"image=" + jpeg[:100], frozenset({400}),
             content_type="application/x-www-form-urlencoded", raw=True),
        Case("multipart-without-boundary", b"--x\r\n\r\n", frozenset({400}),
             content_type="multipart/form-data", raw=True),
        Case("multipart-truncated", b'--xyz\r\nContent-Disposition: form-data; name="image";'
             b' filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n' + jpeg[:300],
             frozenset({400, 415, 422}), content_type="multipart/form-data; boundary=xyz",
             raw=True),
    ]
    return cases


@functools.cache
def corpus() -> tuple[Case, ...]:
    """Every case, names unique."""
    cases = (basic() + every_format_and_mode() + truncations() + corruptions()
             + pixel_bombs() + animations() + extreme_shapes() + polyglots()
             + names_and_types())
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return tuple(cases)
