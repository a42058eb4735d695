"""Helpers for the browser tests: finding Chromium, a fake camera that films a real photo,
the screen sizes every page is checked at (where elements are, no sideways scroll,
axe-core), where screenshots go, and whether a page in another language still shows
English words of the catalog."""

from __future__ import annotations

import functools
import os
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from testkit import ROOT

ARTIFACTS = ROOT / "artifacts" / "screenshots"

# Headless Debian Chromium, with nothing that phones home.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
]
FAKE_CAMERA_ARGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]

MISSING_BROWSER = """\
The browser tests need Chromium and none was found.
  * Debian/Ubuntu (what CI does):  sudo apt-get install -y chromium fonts-dejavu-core fonts-noto-cjk
  * without root:                  .venv/bin/playwright install chromium
                                   (downloads Playwright's own Chromium into ~/.cache)
  * or point to any Chromium/Chrome: CHROMIUM_PATH=/path/to/chrome make test
To run everything else meanwhile:   .venv/bin/python -m pytest -m 'not browser'"""


def chromium_executable(playwright) -> str | None:
    """CHROMIUM_PATH, else a system Chromium/Chrome, else Playwright's own download;
    None when there is none.  ``""`` means Playwright's own."""
    explicit = os.environ.get("CHROMIUM_PATH")
    if explicit:
        if not Path(explicit).is_file():
            raise FileNotFoundError(f"CHROMIUM_PATH={explicit}: no such file")
        return explicit
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome",
                 "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    try:
        bundled = playwright.chromium.executable_path
    except Exception:
        bundled = None
    if bundled and Path(bundled).is_file():
        return ""
    return None


def launch(pw, extra_args=(), **options):
    """Chromium (``chromium_executable``) with the headless flags and ``extra_args``
    (``options``: more of Playwright's ``launch``, e.g. ``env``); the test fails, saying
    what to install, when there is none."""
    import pytest

    executable = chromium_executable(pw)
    if executable is None:
        pytest.fail(MISSING_BROWSER, pytrace=False)
    if executable:
        options["executable_path"] = executable
    return pw.chromium.launch(args=CHROMIUM_ARGS + list(extra_args), **options)


def filming(pw, video):
    """Chromium whose fake camera films ``video`` (a .y4m); camera permission granted."""
    return launch(pw, FAKE_CAMERA_ARGS + [f"--use-file-for-fake-video-capture={video}"])


def settle(page) -> None:
    """Wait until the page's transitions and animations that end have ended (a button
    still fading into its hover colours, a bar still growing), so that what is checked is
    what stays on the screen."""
    page.evaluate("""() => Promise.all(document.getAnimations()
        .filter(a => a.effect && a.effect.getComputedTiming().endTime !== Infinity)
        .map(a => a.finished.catch(() => null)))""")


def assert_wcag_aa(page) -> None:
    """axe-core's WCAG 2 A/AA rules (contrast, names, labels, ...) on the page as it
    stays once its transitions have ended."""
    from axe_playwright_python.sync_playwright import Axe

    settle(page)
    result = Axe().run(page, options={
        "runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa"]},
        "resultTypes": ["violations"]})
    assert not result.violations_count, result.generate_report()


def camera_frame(image: Image.Image, size=(640, 480)) -> Image.Image:
    """``image`` as a camera of ``size`` films it: cropped to the aspect of ``size``."""
    width, height = size
    src_w, src_h = image.size
    scale = max(width / src_w, height / src_h)
    resized = image.convert("RGB").resize((round(src_w * scale), round(src_h * scale)),
                                          Image.BICUBIC)
    left = (resized.width - width) // 2
    top = (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def noisy_frames(image: Image.Image, count: int, seed: int = 0, size=(640, 480),
                 noise: float = 3.0, jitter: int = 1) -> list[Image.Image]:
    """``count`` frames of a still camera filming ``image``: each shifted by up to
    ``jitter`` pixels either way and with sensor noise of ``noise`` grey levels (the
    standard deviation), as a real camera's still picture is never still."""
    gen = np.random.default_rng(seed)
    width, height = size
    pad = camera_frame(image, (width + 2 * jitter, height + 2 * jitter))
    pixels = np.asarray(pad, dtype=np.float32)
    frames = []
    for _ in range(count):
        dx, dy = gen.integers(0, 2 * jitter + 1, 2)
        crop = pixels[dy:dy + height, dx:dx + width]
        noisy = crop + gen.normal(0, noise, crop.shape)
        frames.append(Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8)))
    return frames


def write_y4m(image: Image.Image | list, path: Path, size=(640, 480), fps: int = 30) -> Path:
    """A YUV4MPEG2 video of ``image`` (cropped to the aspect of ``size``), or of a list
    of frames (each shown for 1/``fps`` s; Chromium plays the file in a loop), for
    Chromium's ``--use-file-for-fake-video-capture``: the fake camera films it."""
    width, height = size
    images = image if isinstance(image, list) else [image]

    def chroma(plane):  # 4:2:0, video (limited) range
        sub = plane.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))
        return np.clip(np.round(128 + (sub - 128) * 224 / 255), 0, 255).astype(np.uint8)

    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for picture in images:
            frame = camera_frame(picture, size).convert("YCbCr")
            y, cb, cr = (np.asarray(channel, dtype=np.float32) for channel in frame.split())
            luma = np.clip(np.round(16 + y * 219 / 255), 0, 255).astype(np.uint8)
            out.write(b"FRAME\n" + luma.tobytes() + chroma(cb).tobytes()
                      + chroma(cr).tobytes())
    return path


# A common laptop, a classroom's big screen and a common phone (CSS pixels).  The phone is
# a touch screen.
SIZES = {
    "desktop": {"viewport": {"width": 1366, "height": 768}},
    "wide": {"viewport": {"width": 1920, "height": 1080}},
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True},
}


def screenshot(page, name: str, full_page: bool = False) -> Path:
    """What is on the screen (or the whole page) as artifacts/screenshots/<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


_ON_SCREEN = """el => {
  const box = el.getBoundingClientRect();
  const width = document.documentElement.clientWidth, height = window.innerHeight;
  if (!box.width || !box.height) return "it has no size (hidden?)";
  if (box.left < -1 || box.top < -1 || box.right > width + 1 || box.bottom > height + 1)
    return `it is at x ${Math.round(box.left)}-${Math.round(box.right)}, y ` +
      `${Math.round(box.top)}-${Math.round(box.bottom)} on a ${width}x${height} screen`;
  const x = box.left + box.width / 2, y = box.top + Math.min(box.height / 2, 8);
  const top = document.elementFromPoint(x, y);
  if (top && top !== el && !el.contains(top))
    return `it is covered by <${top.tagName.toLowerCase()} class="${top.className}">`;
  return "";
}"""


def assert_on_screen(page, *selectors: str) -> None:
    """Each element is entirely inside the viewport, right now, and not covered by
    another one (what the user sees without scrolling)."""
    for selector in selectors:
        problem = page.locator(selector).first.evaluate(_ON_SCREEN)
        assert not problem, f"{selector} is not on the screen: {problem}"


def wait_on_screen(page, selector: str, timeout: float = 10_000) -> None:
    """Eventually on the screen (pages scroll smoothly to what they show)."""
    try:
        page.wait_for_function(
            f"() => !({_ON_SCREEN})(document.querySelector({selector!r}))", timeout=timeout)
    except Exception:  # noqa: BLE001 - say what is wrong, not only that it timed out
        problem = page.locator(selector).first.evaluate(_ON_SCREEN)
        raise AssertionError(f"{selector} is not on the screen after {timeout / 1000:.0f} "
                             f"s: {problem}") from None


def assert_no_sideways_scroll(page, selector: str | None = None) -> None:
    """The page (or one scrolling element) is no wider than the screen."""
    widths = page.evaluate(
        "sel => { const el = sel ? document.querySelector(sel) : document.documentElement;"
        " return [el.scrollWidth, el.clientWidth]; }", selector)
    if widths[0] > widths[1]:
        wide = page.evaluate("""w => Array.from(document.querySelectorAll("body *"))
          .filter(el => el.getBoundingClientRect().right > w + 0.5)
          .slice(0, 5).map(el => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
            + (el.className && typeof el.className === "string"
               ? "." + el.className.trim().split(/\\s+/).join(".") : "")
            + " " + JSON.stringify((el.innerText || "").slice(0, 40)))""", widths[1])
        raise AssertionError(f"{selector or 'the page'} scrolls sideways: {widths}; "
                             f"past the right edge: {wide}")


# --------------------------------------------------------------------------- languages

# Identifiers (<code>: model and job ids, settings) are the same in every language, and
# what people typed (names of datasets and classes, marked translate="no") is data: both
# are not checked.  Text marked as another language than the page's (the language
# switch's "English", an ImageNet label beside its name) is left out too.
NOT_TRANSLATED = ("code", '[translate="no"]')
# A word: letters alone (mobilenet_v3_small, MODEL_DIR, v1 are identifiers, not words).
_WORD = re.compile(r"(?<![A-Za-z0-9_])[A-Za-z]{2,}(?![A-Za-z0-9_])")
_NOT_WORDS = re.compile(r"%\(\w+\)[sd]|\{\w+\}|<[^>]+>|&\w+;")


@functools.lru_cache(maxsize=1)
def english_catalog_words() -> frozenset[str]:
    """Every English word of the catalog's messages (translations/messages.pot), except
    those the Chinese translations keep as they are (JPEG, ONNX, ImageNet, MB, ...)."""
    from babel.messages.pofile import read_po

    def words(catalog, field) -> set[str]:
        found = set()
        for message in catalog:
            value = getattr(message, field)
            for text in (value if isinstance(value, list | tuple) else [value]):
                found.update(w.lower() for w in _WORD.findall(_NOT_WORDS.sub(" ", text or "")))
        return found

    with open(ROOT / "translations" / "messages.pot", "rb") as pot, \
            open(ROOT / "translations" / "zh_Hans_CN" / "LC_MESSAGES" / "messages.po",
                 "rb") as po:
        english, kept = words(read_po(pot), "id"), words(read_po(po), "string")
    return frozenset(english - kept)


_VISIBLE_TEXT = """skip => {
  const parts = [document.title, document.body.innerText];
  for (const el of document.querySelectorAll("input[placeholder], textarea[placeholder]"))
    if (el.offsetParent !== null) parts.push(el.placeholder);
  let text = parts.join("\\n");
  const page = document.documentElement.lang;
  const other = Array.from(document.body.querySelectorAll("[lang]"))
    .filter(el => el.lang && el.lang !== page);
  for (const el of [...document.querySelectorAll(skip), ...other])
    if (el.innerText) text = text.split(el.innerText).join(" ");
  return text;
}"""


def english_on_page(page) -> list[str]:
    """The words of the catalog's English messages that the page shows (its visible text,
    title and placeholders), each with the text around it: none on a page in another
    language."""
    text = page.evaluate(_VISIBLE_TEXT, ", ".join(NOT_TRANSLATED))
    catalog = english_catalog_words()
    return sorted({f"{m.group(0)} (in: …{text[max(0, m.start() - 30):m.end() + 30]}…)"
                   for m in _WORD.finditer(text) if m.group(0).lower() in catalog})


@functools.lru_cache(maxsize=1)
def _chinese():
    from babel.support import Translations

    return Translations.load(str(ROOT / "translations"), ["zh_Hans_CN"])


def zh_pattern(message: str, plural: str | None = None, n: int = 2) -> re.Pattern:
    """What a page shows for one of the scripts' messages in Chinese, its ``{name}``
    parameters standing for any text (a plural message: its form for ``n``)."""
    text = (_chinese().ngettext(message, plural, n) if plural
            else _chinese().gettext(message))
    parts = re.split(r"\{\w+\}", text)
    return re.compile(".+?".join(re.escape(part) for part in parts))


def assert_no_english(page, where: str = "") -> None:
    found = english_on_page(page)
    assert not found, f"English words on the {where or page.url} page: {found}"
