"""Upload bytes -> RGB image: formats, modes, orientation, limits and preprocessing."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import ResNet18_Weights

import model_loader
from testkit import attacks
from testkit.photos import encode, real_photos
from webapp import imaging
from webapp.engines import ModelCard
from webapp.imaging import ImageError
from webapp.serving.classifier import Classifier

LIMIT = 50_000_000


def load(data: bytes, **kw) -> Image.Image:
    return imaging.load(data, max_pixels=kw.pop("max_pixels", LIMIT), **kw)


def pixel(img: Image.Image, xy=(0, 0)) -> tuple:
    return img.getpixel(xy)


# --------------------------------------------------------------------- preprocessing


def _classifier(input_size=224, mean=model_loader.IMAGENET_MEAN, std=model_loader.IMAGENET_STD):
    """Preprocessing needs only the model card, no network."""
    return Classifier(ModelCard(
        key="t", arch="resnet18", labels=["a", "b"], name="t", version="0", source="",
        source_kind="explicit", input_size=input_size, mean=mean, std=std), engine=None)


@pytest.mark.parametrize("photo", real_photos(), ids=lambda p: p.name)
def test_preprocessing_matches_torchvision_imagenet_transform(photo):
    reference = ResNet18_Weights.IMAGENET1K_V1.transforms()
    decoded = load(encode(photo.image, "PNG"))  # lossless: the same pixels
    ours = torch.from_numpy(_classifier().preprocess(decoded))
    theirs = reference(photo.image)
    assert ours.shape == theirs.shape == (3, 224, 224)
    # One Pillow resize of the cropped region instead of resize-then-crop: the same
    # sampling positions, so the same pixels except a rare rounding of one 8-bit level.
    one_level = 1 / 255 / min(model_loader.IMAGENET_STD) + 1e-6
    difference = (ours - theirs).abs()
    assert difference.max() <= one_level
    assert (difference > 1e-6).float().mean() < 0.001


def test_preprocessing_uses_each_models_own_size_and_statistics():
    img = real_photos()[0].image
    tensor = _classifier(64, (0.5,) * 3, (0.5,) * 3).preprocess(img)
    assert tensor.shape == (3, 64, 64)
    assert tensor.min() >= -1.0 and tensor.max() <= 1.0


def test_extremely_elongated_image_is_preprocessed_without_a_huge_resize():
    img = Image.new("RGB", (30000, 1), "red")
    tensor = _classifier().preprocess(img)
    assert tensor.shape == (3, 224, 224)


# --------------------------------------------------------------------- modes -> RGB


def test_rgba_is_composited_on_white():
    img = Image.new("RGBA", (4, 1), (255, 0, 0, 255))
    img.putpixel((1, 0), (0, 0, 255, 0))  # fully transparent blue
    out = load(encode(img, "PNG"))
    assert out.mode == "RGB"
    assert pixel(out, (0, 0)) == (255, 0, 0)
    assert pixel(out, (1, 0)) == (255, 255, 255)


def test_palette_with_transparency_becomes_white():
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 0, 128, 0] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    out = load(encode(img, "PNG", transparency=0))
    assert [pixel(out, (0, 0)), pixel(out, (1, 0))] == [(255, 255, 255), (0, 128, 0)]
    assert pixel(load(encode(img, "GIF", transparency=0))) == (255, 255, 255)


def test_la_and_grey_modes():
    la = Image.new("LA", (1, 1), (10, 0))
    assert pixel(load(encode(la, "PNG"))) == (255, 255, 255)
    assert pixel(load(encode(Image.new("L", (1, 1), 77), "PNG"))) == (77, 77, 77)
    assert pixel(load(encode(Image.new("1", (1, 1), 1), "BMP"))) == (255, 255, 255)


def test_16_bit_greyscale_is_scaled_not_clipped():
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    out = load(encode(img, "PNG"))
    assert [pixel(out, (x, 0))[0] for x in range(3)] == [0, 128, 255]
    tiff = load(encode(img, "TIFF"))
    assert [pixel(tiff, (x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_32_bit_integer_and_float_images():
    i32 = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    out = load(encode(i32, "TIFF"))
    assert [pixel(out, (x, 0))[0] for x in range(2)] == [0, 255]
    f32 = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    out = load(encode(f32, "TIFF"))
    assert [pixel(out, (x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_cmyk_jpeg_becomes_the_right_colour():
    cyan = Image.new("CMYK", (8, 8), (255, 0, 0, 0))
    r, g, b = pixel(load(encode(cyan, "JPEG", quality=95)), (4, 4))
    assert r < 30 and g > 220 and b > 220


def test_lab_and_ycbcr_images_become_rgb():
    lab = Image.new("LAB", (2, 2), (100 * 255 // 100, 128, 128))  # L=100: white
    r, g, b = pixel(load(encode(lab, "TIFF")))
    assert min(r, g, b) > 240
    ycc = Image.new("RGB", (8, 8), (200, 30, 30)).convert("YCbCr")
    r, g, b = pixel(load(encode(ycc, "JPEG", quality=95)), (4, 4))
    assert r > 170 and g < 70 and b < 70


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (200, 100), "blue")
    img.paste((255, 0, 0), (0, 0, 100, 100))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    out = load(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (100, 200)
    r, g, b = pixel(out, (50, 20))  # the red half is now on top
    assert r > 200 and b < 60


def test_broken_exif_does_not_reject_a_good_photo():
    img = Image.new("RGB", (16, 16), "green")
    data = encode(img, "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    assert load(data).size == (16, 16)


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    r, g, b = pixel(load(buf.getvalue()))
    assert r > 200 and b < 60


@pytest.mark.parametrize("fmt", ["WEBP", "AVIF", "TIFF", "BMP", "HEIF"])
def test_other_allowed_formats_decode(fmt):
    if fmt not in imaging.ALLOWED_FORMATS:
        pytest.skip(f"{fmt} support is not installed")
    img = Image.new("RGB", (32, 24), (0, 0, 255))
    out = load(encode(img, fmt, quality=90) if fmt in ("WEBP", "AVIF", "HEIF")
               else encode(img, fmt))
    r, g, b = pixel(out, (16, 12))
    assert out.size == (32, 24) and b > 200 and r < 60


def test_jpeg_is_decoded_at_reduced_scale_but_never_below_six_times_the_resize():
    """A reduced decode keeps the shorter side at least DRAFT_GAP (6) times the resize
    size, and says by how much it reduced (the geometry the preprocessing places the
    crop on)."""
    big = Image.new("RGB", (8000, 6000), "white")
    out = load(encode(big, "JPEG"), min_side=256)
    assert min(out.size) >= 6 * 256
    assert out.size == (4000, 3000) and out.info["scale"] == 2  # 1/2 scale
    assert out.info["original_size"] == (8000, 6000)
    assert load(encode(big, "JPEG")).size == (8000, 6000)  # no target: full size
    medium = load(encode(Image.new("RGB", (4000, 3000), "white"), "JPEG"), min_side=256)
    assert medium.size == (4000, 3000) and medium.info["scale"] == 1  # 12 MP: in full


# --------------------------------------------------------------------- refusals


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("size", [(100_000, 100_000), (60_000, 1_000), (2**31 - 1, 2)])
def test_pixel_bomb_is_refused_from_the_header(size):
    with pytest.raises(ImageError) as info:
        load(_png_header_only(*size))
    assert info.value.status == 413 and info.value.code == "too_many_pixels"


def test_pixel_limit_is_configurable():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageError, match="limit is 9,999"):
        load(data, max_pixels=9_999)
    assert load(data, max_pixels=10_000).size == (100, 100)


@pytest.mark.parametrize(
    "data, status, code, words",
    [
        (b"", 400, "empty_file", "empty"),
        (b"hello, this is a text file\n" * 20, 415, "not_an_image", "plain text"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", 415, "not_an_image",
         "application/pdf"),
        (bytes(range(256)) * 8, 415, "not_an_image", "not an image"),
    ],
)
def test_non_images_are_refused_with_a_reason(data, status, code, words):
    with pytest.raises(ImageError) as info:
        load(data)
    assert (info.value.status, info.value.code) == (status, code)
    assert words in info.value.message


@pytest.mark.parametrize("fmt", ["PCX", "ICO", "TGA", "PPM"])
def test_formats_outside_the_allow_list_are_refused_by_name(fmt):
    data = encode(Image.new("RGB", (16, 16)), fmt)
    with pytest.raises(ImageError) as info:
        load(data)
    assert info.value.status == 415 and info.value.code == "unsupported_format"
    assert info.value.message.startswith(fmt)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF"])
def test_truncated_images_are_unreadable_not_grey(fmt):
    photo = real_photos()[0].image
    data = encode(photo, fmt)
    with pytest.raises(ImageError) as info:
        load(data[: len(data) // 2])
    assert info.value.status in (415, 422)
    if fmt in ("JPEG", "PNG"):
        assert info.value.status == 422 and "damaged or incomplete" in info.value.message


# --------------------------------------------------------------------- decode budget


def _png_of_empty_chunks(chunks: int) -> bytes:
    """A valid 8×8 PNG with ``chunks`` empty private chunks before its pixels."""
    def chunk(kind, body=b""):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    ihdr = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\x00" + b"\x80" * 24 for _ in range(8)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"prVt") * chunks
            + chunk(b"IDAT", pixels) + chunk(b"IEND"))


@pytest.mark.parametrize("name, data", [
    ("JPEG padding", attacks.filler_jpeg(4 * attacks.MB)),
    ("JPEG empty segments", b"\xff\xd8" + b"\xff\xe0\x00\x02" * 500_000),
    ("JPEG with 5000 scans", attacks.many_scans_jpeg(5000)),
    ("PNG of 200,000 empty chunks", _png_of_empty_chunks(200_000)),
])
def test_files_built_to_be_slow_to_decode_are_refused(name, data):
    with pytest.raises(ImageError) as info:
        load(data, min_side=256)
    assert (info.value.status, info.value.code) == (422, "too_slow_to_decode"), name
    assert info.value.message.startswith("The file was refused before decoding it")


def test_real_files_stay_well_inside_the_budget():
    """A progressive JPEG, a PNG written in many small chunks and a JPEG with 3,000
    metadata segments are decoded; a budget of no time at all refuses even them."""
    photo = real_photos()[0].image.resize((1600, 1200))
    progressive = encode(photo, "JPEG", progressive=True)
    assert load(progressive, min_side=256, seconds=10).size[0] >= 256
    assert load(_png_of_empty_chunks(3000)).size == (8, 8)
    segments = b"\xff\xe5\x00\x12" + b"x" * 16
    assert load(progressive[:2] + segments * 3000 + progressive[2:]).size == photo.size
    with pytest.raises(ImageError) as info:
        load(progressive, seconds=0)
    assert info.value.code == "too_slow_to_decode" and "longer than 0 s" in info.value.message
