"""Requests built to cost a server more than they cost their sender, one per class of
docs/security.md, generated here (nothing downloaded) and shared by the tests
(which assert the 4xx and that a real photo sent meanwhile still gets its 200) and by
bench/abuse.py (which times them).  Deterministic: the same bytes on every run."""

from __future__ import annotations

import io
import re
import struct
import zipfile

from testkit.photos import photo

MB = 1024 * 1024


def filler_jpeg(size: int = 19 * MB) -> bytes:
    """A JPEG start marker and then ``FF`` padding: Pillow's header parser walks it one
    byte per Python loop (21 s for 19 MB, before the decode budget)."""
    return b"\xff\xd8" + b"\xff" * (size - 2)


def many_scans_jpeg(scans: int = 5000, size=(3000, 2000)) -> bytes:
    """A real progressive JPEG with one small AC scan repeated ``scans`` times: libjpeg
    runs every scan over every block of the image (an hour for 500,000 such scans)."""
    image = photo("chelsea").image.resize(size)
    buf = io.BytesIO()
    image.save(buf, "JPEG", progressive=True, quality=70)
    data = buf.getvalue()
    starts = [m.start() for m in re.finditer(rb"\xff\xda", data)]
    ends = starts[1:] + [len(data) - 2]
    _, start, end = min((e - s, s, e) for s, e in zip(starts[1:], ends[1:]))
    return data[:-2] + data[start:end] * scans + data[-2:]


def filler_zip(members: int = 40, member_size: int = 19 * MB) -> bytes:
    """A dataset archive of ``members`` filler JPEGs in a class folder: deflate turns
    each 19 MB into ~19 KB (a 1.5 MB archive held a worker for 198 s)."""
    buf = io.BytesIO()
    member = filler_jpeg(member_size)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("pen/real.png", real_png())
        for n in range(members):
            zf.writestr(f"pen/{n}.jpg", member)
    return buf.getvalue()


def understated_zip(entries: int = 100_000) -> bytes:
    """A zip of ``entries`` empty files whose end record claims it holds one."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for n in range(entries):
            zf.writestr(zipfile.ZipInfo(f"pen/{n}.png"), b"")
    data = bytearray(buf.getvalue())
    end = data.rindex(b"PK\x05\x06")
    data[end + 8:end + 12] = struct.pack("<HH", 1, 1)  # entries on this disk, in total
    return bytes(data)


def form_flood(size: int = 19 * MB) -> bytes:
    """An URL-encoded form of empty fields, ``a=&a=&...`` (+930 MB and 9 s to parse
    19 MB of it, before the form limit)."""
    return b"a=&" * (size // 3)


def multipart_parts(parts: int = 5000, boundary: str = "b") -> bytes:
    """A multipart body of ``parts`` tiny text fields."""
    field = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nx\r\n"
             .encode())
    return field * parts + f"--{boundary}--\r\n".encode()


def deep_json(depth: int = 100_000) -> bytes:
    """``[[[[...]]]]``: Python's parser recurses once per level."""
    return b"[" * depth + b"]" * depth


def chunks(data: bytes, size: int = 64 * 1024):
    """``data`` as a generator, which ``requests`` sends chunked (no Content-Length)."""
    for start in range(0, len(data), size):
        yield data[start:start + size]


def real_png(size: int = 96) -> bytes:
    image = photo("chelsea").image.copy()
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def real_jpeg(size=(640, 427)) -> bytes:
    """The photo a normal client sends while an attack runs."""
    buf = io.BytesIO()
    photo("chelsea").image.resize(size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def big_png(side: int = 7000) -> bytes:
    """A legal PNG of ``side`` × ``side`` pixels (49 MP at 7000: just under
    MAX_IMAGE_PIXELS) that compresses well (a radial gradient): sixteen of them are a few
    MB to send and took 16 s and ~400 MB of a worker to decode, before the request's
    pixel budget."""
    from PIL import Image

    image = Image.radial_gradient("L").resize((side, side)).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def header_lines(total: int, line: int = 8000) -> list[bytes]:
    """Header lines of ``line`` bytes each (under gunicorn's 8190 per line) adding up to
    ``total`` bytes: a head gunicorn took whole (0.78 MB) before the head limit."""
    return [f"X-Pad-{n}: {'p' * (line - 14)}\r\n".encode()
            for n in range(max(1, total // line))]
