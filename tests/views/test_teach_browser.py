"""The Teach page in a real browser (headless Chromium via Playwright) against a real
gunicorn server: Chromium's fake camera films a real cat photo; one class is captured by
holding the button and with the timer, the other from files; a bad shot is deleted; Train
shows the job's progress in words from the first second; the new model's card says in
plain words how it did; Try it answers from the camera; Activate makes
the kiosk answer with the new classes; a second job is cancelled from the page.  On a
phone and a portrait tablet, the camera stays on the screen beside every class's capture
button.  Every request goes to the test server and no JavaScript error happens."""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit

import pytest
from PIL import ImageOps
from playwright.sync_api import sync_playwright

from tests.browser import (
    FAKE_CAMERA_ARGS,
    SIZES,
    assert_no_sideways_scroll,
    assert_on_screen,
    screenshot,
    wait_on_screen,
    write_y4m,
)
from tests.conftest import Server, encode, free_port
from tests.photos import photo
from tests.views.test_browser import _launch, assert_wcag_aa

pytestmark = pytest.mark.browser

TOKEN = "teach-browser-token-0123456789"
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("teach-browser")
    coffee = photo("coffee").image
    pictures = []
    for n in range(6):  # different crops and flips of the espresso photo
        w, h = coffee.size
        box = (n * w // 30, n * h // 40, w - (5 - n) * w // 30, h - (5 - n) * h // 40)
        image = coffee.crop(box)
        if n % 2:
            image = ImageOps.mirror(image)
        path = base / f"coffee-{n}.jpg"
        path.write_bytes(encode(image, "JPEG", quality=90))
        pictures.append(str(path))
    return {"base": base, "coffee": pictures,
            "camera": write_y4m(photo("chelsea").image, base / "cat.y4m"),
            "unrelated": write_y4m(photo("rocket").image, base / "rocket.y4m")}


@pytest.fixture(scope="module")
def server(files):
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "WEB_CONCURRENCY": "1",
           "ADMIN_TOKEN": TOKEN, "MODEL_DIR": str(files["base"] / "models"),
           "DATA_DIR": str(files["base"] / "data"), "JOB_THREADS": "1"}
    srv = Server([sys.executable, "-m", "gunicorn", "app:app"], env, port,
                 files["base"] / "server.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def playwright():
    with sync_playwright() as pw:
        yield pw


def launch(pw, camera):
    """Chromium whose fake camera films ``camera`` (a .y4m file)."""
    return _launch(pw, FAKE_CAMERA_ARGS + [f"--use-file-for-fake-video-capture={camera}"])


@pytest.fixture(scope="module")
def browser(playwright, files):
    browser = launch(playwright, files["camera"])
    yield browser
    browser.close()


def count(page, label) -> int:
    return int(page.locator(f'.teach-class[data-label="{label}"] .teach-count').inner_text())


def log_in_and_create(page, server, name, classes="cat, coffee"):
    page.goto(server.url + "/admin/teach")
    assert "/admin/login" in page.url
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url("**/admin/teach")
    assert_no_sideways_scroll(page)
    assert_wcag_aa(page)
    page.fill("#dataset-name", name)
    page.fill("#dataset-classes", classes)
    page.click("#create-button")
    page.wait_for_url(f"**/admin/teach/{name}")
    page.wait_for_selector('#teach[data-camera="on"]')
    page.wait_for_function("() => document.getElementById('teach-camera').videoWidth > 0")


@pytest.mark.parametrize("size", ["phone", "tablet"])
def test_on_a_phone_or_tablet_the_camera_stays_beside_every_capture_button(
        browser, server, size):
    options = SIZES["phone"] if size == "phone" else {
        "viewport": {"width": 768, "height": 1024}, "is_mobile": True, "has_touch": True}
    context = browser.new_context(**options)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    try:
        log_in_and_create(page, server, f"on-a-{size}", "cat, coffee, cup, pen")
        assert_no_sideways_scroll(page)
        for label in ("cat", "coffee", "cup", "pen"):
            button = f'.teach-class[data-label="{label}"] .teach-capture'
            page.locator(button).evaluate("el => el.scrollIntoView({block: 'end'})")
            page.wait_for_timeout(200)
            assert_on_screen(page, "#teach-camera", button)
        # Hold one: the pictures arrive (and say what they show).
        page.locator('.teach-class[data-label="cat"] .teach-capture').evaluate(
            "el => el.scrollIntoView({block: 'center'})")
        page.locator('.teach-class[data-label="cat"] .teach-capture').hover()
        page.mouse.down()
        page.wait_for_function("""() => document.querySelectorAll(
            '.teach-class[data-label="cat"] .teach-thumb').length >= 3""")
        page.mouse.up()
        page.wait_for_function("() => !document.querySelector('.teach-capture.capturing')")
        alt = page.locator('.teach-class[data-label="cat"] .teach-thumb img').first
        assert alt.get_attribute("alt") == "A picture of cat"
        assert_on_screen(page, "#teach-camera")
        screenshot(page, f"teach-{size}")
        assert_wcag_aa(page)
        assert not errors, errors
    finally:
        context.close()


def test_teach_capture_train_activate_and_the_kiosk_knows_it(browser, server, files):
    context = browser.new_context(**SIZES["desktop"])
    requests, errors = [], []
    context.on("request", lambda request: requests.append(request.url))
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on("console", lambda msg: errors.append(f"console: {msg.text}")
            if msg.type == "error" else None)
    try:
        # Log in on the way to the Teach page; make a dataset with two classes.
        log_in_and_create(page, server, "cat-or-coffee")
        assert page.locator("#train-button").is_disabled()

        # Hold the capture button: a burst of pictures, the count and thumbnails grow.
        capture = page.locator('.teach-class[data-label="cat"] .teach-capture')
        capture.hover()
        page.mouse.down()
        page.wait_for_function(
            """() => Number(document.querySelector('.teach-class[data-label="cat"] '
                   + '.teach-count').textContent) >= 7""", timeout=TIMEOUT_MS)
        page.mouse.up()
        page.wait_for_function("() => !document.querySelector('.teach-capture.capturing')")
        held = count(page, "cat")
        assert held >= 7

        # Alone in front of the camera: the timer counts down 3 s, then takes pictures
        # for the seconds chosen (every 3 s of it one moment), the numbers over the camera.
        page.select_option("#timer-seconds", "5")
        page.click('.teach-class[data-label="cat"] .teach-timer')
        page.wait_for_selector("#timer-overlay:not([hidden])")
        assert page.locator("#timer-number").inner_text() in ("3", "2")
        assert "Get ready to show cat" in page.locator("#timer-words").inner_text()
        screenshot(page, "teach-timer")
        page.wait_for_selector("#timer-overlay.teach-timer-capturing")
        page.wait_for_function(
            f"""() => Number(document.querySelector('.teach-class[data-label="cat"] '
                   + '.teach-count').textContent) > {held}""")
        assert "Taking pictures of cat" in page.locator("#timer-words").inner_text()
        page.wait_for_selector("#timer-overlay", state="hidden", timeout=TIMEOUT_MS)
        cats = count(page, "cat")
        assert cats >= held + 4, (held, cats)  # about 4 a second for 5 s
        thumbs = page.locator('.teach-class[data-label="cat"] .teach-thumb img')
        assert thumbs.count() == cats
        thumbs.first.evaluate("img => img.decode()")
        # The other class from files.
        page.set_input_files('.teach-class[data-label="coffee"] .teach-files', files["coffee"])
        page.wait_for_function(
            """() => document.querySelectorAll('.teach-class[data-label="coffee"] '
                   + '.teach-thumb').length === 6""")
        assert count(page, "coffee") == 6
        # Delete a bad shot.
        first = page.locator('.teach-class[data-label="cat"] .teach-thumb').first
        first.hover()
        first.locator(".teach-thumb-delete").click()
        page.wait_for_function(
            f"""() => document.querySelector('.teach-class[data-label="cat"] .teach-count')
                   .textContent === '{cats - 1}'""")
        assert thumbs.count() == cats - 1
        assert int(page.locator("#total-count").inner_text()) == cats - 1 + 6
        screenshot(page, "teach-desktop")
        assert_wcag_aa(page)

        # Train: the job's progress is shown live until the model is there.
        page.evaluate("""() => {  // remember every summary the page shows
            window.seenSummaries = [];
            new MutationObserver(() => window.seenSummaries.push(
                document.getElementById('job-summary').textContent)
            ).observe(document.getElementById('job-summary'),
                      {childList: true, characterData: true, subtree: true});
        }""")
        assert page.locator("#train-button").is_enabled()
        page.click("#train-button")
        # From the first second: what it is doing, in words, and how long it should take.
        page.wait_for_function("() => window.seenSummaries.length > 0")
        first = page.evaluate("window.seenSummaries")[0]
        assert "about" in first.lower() and (" s" in first or " min" in first), first
        page.wait_for_function("() => window.seenSummaries.some(s => s.startsWith("
                               "'Learning from the pictures'))", timeout=240_000)
        page.locator("#train-card").scroll_into_view_if_needed()
        screenshot(page, "teach-training")
        page.wait_for_selector('#teach[data-job-state="done"]', timeout=240_000)
        seen = page.evaluate("window.seenSummaries")
        assert any("round 1 of at most" in s and "left" in s for s in seen), seen
        assert not any("Epoch" in s or "epoch" in s for s in seen), seen
        page.wait_for_selector("#result:not([hidden])")
        # The new model's card is brought to the screen, with the focus on it.
        wait_on_screen(page, "#result-title")
        assert page.evaluate("document.activeElement.id") == "result-title"
        confusion = page.locator("#result-confusion")
        confusion.evaluate("img => img.decode()")
        assert confusion.evaluate("img => img.naturalWidth") > 100
        # In plain words up front, each class on its own line; the figures behind a
        # disclosure.
        page.wait_for_selector("#result-plain .teach-result-classes li")
        plain = page.locator("#result-plain").inner_text()
        assert "It was right on" in plain and "cat: right on" in plain, plain
        assert "burst" not in plain.lower() and "validation" not in plain.lower(), plain
        assert "I'm not sure what this is" in plain
        assert page.locator("#result-metrics").is_hidden()
        page.click("#result-details summary")
        assert "Validation accuracy" in page.locator("#result-metrics").inner_text()
        assert "cat, coffee" in page.locator("#result-metrics").inner_text()
        page.click("#result-details summary")
        screenshot(page, "teach-done")
        assert_wcag_aa(page)  # the job's progress and the new model's card

        # Try it: the camera's cat, with the new model (not active yet).
        page.click("#try-camera")  # "Try it live"
        page.wait_for_selector("#try-result .label")
        assert page.locator("#try-result .label").first.inner_text() == "cat"
        page.wait_for_function(
            "() => Number(document.getElementById('teach').dataset.liveAnswers) >= 3")
        assert page.locator("#try-result .prediction-unknown").count() == 0
        page.click("#try-camera")  # stop
        assert page.locator("#try-camera").get_attribute("aria-pressed") == "false"
        assert page.locator("#result-active").is_hidden()
        page.click("#activate-button")
        page.wait_for_selector("#activated-note:not([hidden])")

        # The kiosk now answers with the new classes.
        page.goto(server.url + "/kiosk")
        page.wait_for_selector('#kiosk[data-state="live"]')
        page.wait_for_function("() => document.getElementById('camera').videoWidth > 0")
        answer = None
        for _ in range(20):  # the worker swaps models within about a second
            page.click("#capture-button")
            page.wait_for_selector('#kiosk[data-state="result"]')
            labels = page.locator("#kiosk-bars .kiosk-bar-label").all_inner_texts()
            if {label.lower() for label in labels} == {"cat", "coffee"}:
                answer = labels[0]
                break
            page.click("#again-button")
            page.wait_for_timeout(300)
        assert answer == "Cat"
        # Back to the camera: live answers follow it (several, one request at a time).
        page.click("#again-button")
        page.wait_for_selector('#kiosk[data-live-state="on"]')
        page.wait_for_function(
            "() => Number(document.getElementById('kiosk').dataset.liveAnswers) >= 3")
        assert page.locator("#live-answer .kiosk-answer-label").inner_text() == "Cat"
        assert page.locator("#kiosk-bars .kiosk-bar").count() == 2

        # Train again and cancel from the page.
        page.goto(server.url + "/admin/teach/cat-or-coffee")
        page.wait_for_selector("#result:not([hidden])")  # the last job's model is shown
        page.click("#train-options summary")
        page.fill("#opt-epochs", "100")
        page.click("#train-button")
        page.wait_for_selector('#teach[data-job-state="running"]', timeout=120_000)
        page.click("#cancel-button")
        page.wait_for_selector('#teach[data-job-state="cancelled"]', timeout=120_000)
        assert "nothing was stored" in page.locator("#job-summary").inner_text()
        assert page.locator("#train-button").is_enabled()

        origin = urlsplit(server.url)
        outside = [url for url in requests if not url.startswith(("data:", "blob:"))
                   and (urlsplit(url).scheme, urlsplit(url).netloc)
                   != (origin.scheme, origin.netloc)]
        assert not outside, outside
        assert not errors, errors
    finally:
        context.close()


def test_the_kiosk_is_not_sure_about_what_the_class_never_taught_it(playwright, server,
                                                                     files):
    """After the test above, the active model knows a cat and a coffee.  A camera filming
    a rocket gets "I'm not sure what this is", live and when the button is pressed, with
    the bars greyed (issue 15: a two-class model no longer calls everything one of them)."""
    ready = requests_get(server.url + "/readyz")
    assert ready["model"]["classes"] == 2, ready
    other = launch(playwright, files["unrelated"])  # another camera, another Chromium
    try:
        page = other.new_context(**SIZES["desktop"]).new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server.url + "/kiosk")
        page.wait_for_selector('#kiosk[data-live-state="on"]')
        page.wait_for_selector("#live-answer.kiosk-unsure")
        assert "I'm not sure what this is" in page.locator("#live-answer").inner_text()
        assert page.locator("#kiosk-bars.kiosk-bars-unsure .kiosk-bar").count() == 2
        page.click("#capture-button")
        page.wait_for_selector('#kiosk[data-state="result"]')
        status = page.locator("#status")
        assert "I'm not sure what this is" in status.inner_text()
        assert "kiosk-unsure" in status.get_attribute("class")
        assert page.locator("#kiosk-bars.kiosk-bars-unsure").count() == 1
        assert_wcag_aa(page)
    finally:
        other.close()


def requests_get(url: str) -> dict:
    import json
    from urllib.request import urlopen

    with urlopen(url, timeout=30) as response:
        return json.load(response)
