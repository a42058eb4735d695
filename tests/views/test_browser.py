"""The pages in a real browser (headless Chromium via Playwright) against a real gunicorn
server on 127.0.0.1: the upload page, the explanation view and the kiosk with a fake
camera that films a real photo, at a laptop's and a phone's size (what is on the screen,
no sideways scrolling, axe-core's WCAG A/AA rules), and all of them in Chinese.  Every
request every page makes is recorded and must go to the test server; any JavaScript error
fails the test.
Screenshots of each page go to artifacts/screenshots/ (the pictures in docs/ are copies).

Without Chromium these tests fail with what to install (testkit/browser.py); they never
skip silently.  `pytest -m 'not browser'` leaves them out on purpose."""

from __future__ import annotations

import contextlib
import os
import sys
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import sync_playwright

from testkit.browser import (
    SIZES,
    assert_no_english,
    assert_no_sideways_scroll,
    assert_on_screen,
    assert_wcag_aa,
    filming,
    launch,
    screenshot,
    wait_on_screen,
    write_y4m,
)
from testkit.photos import CAT_CLASSES, chinese_names, encode, photo, real_photos
from testkit.server import Server, free_port
from webapp.stores.kiosk_settings import KioskSettings, KioskSettingsStore
from webapp.views.kiosk import CONFIDENCE_WORDS

pytestmark = pytest.mark.browser

WORDS = {str(words) for _, words in CONFIDENCE_WORDS}
LANGUAGES = {"en": "English", "zh_Hans_CN": "中文"}
TIMEOUT_MS = 60_000


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("browser")
    photos = base / "photos"
    photos.mkdir()
    for name in ("chelsea", "coffee"):
        (photos / f"{name}.jpg").write_bytes(encode(photo(name).image, "JPEG", quality=92))
    (photos / "notes.jpg").write_text("Shopping list: milk, bread.\n")  # not a photo
    return {
        "base": base,
        "settings": base / "kiosk.json",
        "cat": photos / "chelsea.jpg",
        "coffee": photos / "coffee.jpg",
        "not_a_photo": photos / "notes.jpg",
        "camera": write_y4m(photo("chelsea").image, base / "cat.y4m"),
        # A camera whose scene changes every 3 s (a cat, then an espresso): an answer
        # stays while the camera sees what was answered, so the idle time runs only here.
        "changing": write_y4m([photo("chelsea").image] * 30 + [photo("coffee").image] * 30,
                              base / "cat-coffee.y4m", size=(320, 240), fps=10),
    }


@pytest.fixture(scope="module")
def server(files):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSK_")}
    env = {**env, "PORT": str(port), "HOST": "127.0.0.1", "WEB_CONCURRENCY": "1",
           "KIOSK_SETTINGS_FILE": str(files["settings"])}
    srv = Server([sys.executable, "-m", "gunicorn", "app:app"], env, port,
                 files["base"] / "server.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture()
def kiosk_settings(files):
    """The teacher settings the server reads, reset before and after each test."""
    store = KioskSettingsStore(files["settings"], KioskSettings(), LANGUAGES)
    store.reset()
    yield store
    store.reset()


@pytest.fixture(scope="module")
def playwright_instance():
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright_instance, files):
    """Chromium whose (fake) camera films the cat photo."""
    with contextlib.closing(filming(playwright_instance, files["camera"])) as browser:
        yield browser


@pytest.fixture(scope="module")
def browser_scene_changes(playwright_instance, files):
    """Chromium whose (fake) camera films a cat for 3 s, then an espresso for 3 s."""
    with contextlib.closing(filming(playwright_instance, files["changing"])) as browser:
        yield browser


@pytest.fixture()
def scene_page(browser_scene_changes, server):
    """A watched page whose camera's scene changes every 3 s."""
    with watching(browser_scene_changes, server) as watched:
        yield watched


@pytest.fixture(scope="module")
def browser_without_camera_permission(playwright_instance, files):
    """A camera exists, but the permission prompt is never accepted."""
    browser = launch(playwright_instance, [
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={files['camera']}"])
    yield browser
    browser.close()


class Watched:
    """A page whose every request and JavaScript error is recorded."""

    def __init__(self, context, server):
        self.context = context
        self.server = server
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.allow_4xx = False  # a test sending bad files expects the browser to log 4xx
        context.on("request", lambda request: self.requests.append(request.url))
        self.page = context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.on("console", self._console)

    def _console(self, msg):
        expected = self.allow_4xx and msg.text.startswith(
            "Failed to load resource: the server responded with a status of 4")
        if msg.type == "error" and not expected:
            self.errors.append(f"console: {msg.text}")

    def goto(self, path):
        response = self.page.goto(self.server.url + path)
        assert response.status == 200
        return self.page

    def assert_clean(self):
        assert self.requests, "the page made no requests at all"
        origin = urlsplit(self.server.url)
        outside = [
            url for url in self.requests
            if not url.startswith(("data:", "blob:"))
            and (urlsplit(url).scheme, urlsplit(url).netloc) != (origin.scheme, origin.netloc)
        ]
        assert not outside, f"requests that left the server: {outside}"
        assert not self.errors, self.errors


def _watched(browser, server, size="desktop", **context_options):
    context = browser.new_context(**SIZES[size], **context_options)
    watched = Watched(context, server)
    return context, watched


@contextlib.contextmanager
def watching(browser, server, size="desktop"):
    """A watched page, checked clean when the test is done."""
    context, watched = _watched(browser, server, size)
    try:
        yield watched
        watched.assert_clean()
    finally:
        context.close()


@pytest.fixture()
def page(browser, server):
    with watching(browser, server) as watched:
        yield watched


@pytest.fixture(params=["desktop", "phone"])
def sized(request, browser, server):
    """A watched page at each screen size in turn (``sized.size``: its name)."""
    with watching(browser, server, request.param) as watched:
        watched.size = request.param
        yield watched


def wait_state(page, state, timeout=TIMEOUT_MS):
    page.wait_for_selector(f'#kiosk[data-state="{state}"]', timeout=timeout)


def kiosk_result(page):
    """(labels of the bars as shown, the confidence words) once the answer is on screen."""
    wait_state(page, "result")
    page.wait_for_selector("#kiosk-bars .kiosk-bar")
    labels = page.locator("#kiosk-bars .kiosk-bar-label").all_inner_texts()
    words = page.locator("#status .kiosk-confidence").inner_text()
    return labels, words


def lower(names):
    return {name.lower() for name in names}


# --------------------------------------------------------------------------- upload page

# What the public pages must not tell visitors: notes for the server's owner.
OWNER_WORDS = ("model_loader", "TORCH_HOME", "MODEL_WEIGHTS", "quantization", "bf16",
               "Grad-CAM", "_swish")


def assert_for_visitors(p):
    text = p.locator("body").inner_text()
    for words in OWNER_WORDS:
        assert words not in text, f"a note for the owner on a public page: {words}"


def test_upload_page_shows_three_bars_with_the_right_label(page, files):
    p = page.goto("/")
    p.set_input_files("#image-input", str(files["cat"]))
    p.wait_for_selector("#predictions li.prediction")
    assert p.locator("#predictions li.prediction").count() == 3
    labels = p.locator("#predictions .label").all_inner_texts()
    assert labels[0].lower() in lower(CAT_CLASSES), labels
    p.wait_for_function(
        "() => parseFloat(document.querySelector('#predictions .progress-bar').style.width) > 10")
    assert p.locator("#preview").get_attribute("src").startswith("blob:")
    assert "Answered by EfficientNet-Lite0" in p.locator("#result-meta").inner_text()
    # Screen readers hear the answer (the bars themselves are not announced).
    assert p.locator("#announcer").get_attribute("aria-live") == "polite"
    announced = p.locator("#announcer").inner_text()
    assert announced.startswith(labels[0]) and "%" in announced


def test_upload_page_fits_a_laptop_and_a_phone(sized, files):
    """The photo and its bars are on the screen once chosen (a phone scrolls to them), so
    are an error and the example photos; nothing scrolls sideways; axe finds nothing."""
    p = sized.goto("/")
    sized.allow_4xx = True  # the file that is not a photo
    assert_no_sideways_scroll(p)
    assert_on_screen(p, "#drop-zone", "#classify-button", ".example-button")
    assert_for_visitors(p)
    assert_wcag_aa(p)
    p.set_input_files("#image-input", str(files["cat"]))
    p.wait_for_selector("#predictions li.prediction")
    wait_on_screen(p, "#predictions")
    assert_on_screen(p, "#preview", "#guesses-heading", "#predictions")
    assert p.locator("#guesses-heading").inner_text() == "Top 3 guesses"
    assert_no_sideways_scroll(p)
    p.wait_for_timeout(800)  # let the bars finish growing for the picture
    screenshot(p, f"upload-{sized.size}")
    assert_wcag_aa(p)
    # An example photo, fetched from the server itself.
    p.locator('.example-button[value="coffee"]').click()
    p.wait_for_function("() => (document.querySelector('#predictions .label') || {})"
                        ".textContent === 'Espresso'")
    wait_on_screen(p, "#predictions")
    # A file that is not a photo: the message, on the screen, in words.
    p.set_input_files("#image-input", str(files["not_a_photo"]))
    p.wait_for_selector("#alert:not(.d-none)")
    wait_on_screen(p, "#alert")
    assert "not an image" in p.locator("#alert").inner_text()
    assert p.locator("#result").is_hidden()


def test_upload_page_answers_several_dropped_photos_one_after_the_other(page):
    p = page.goto("/")
    p.evaluate("""async () => {  // drop two photos at once on the drop zone
        const files = new DataTransfer();
        for (const name of ["cat", "coffee"]) {
          const blob = await (await fetch(`/static/examples/${name}.jpg`)).blob();
          files.items.add(new File([blob], name + ".jpg", {type: "image/jpeg"}));
        }
        document.getElementById("drop-zone").dispatchEvent(
          new DragEvent("drop", {dataTransfer: files, bubbles: true, cancelable: true}));
    }""")
    p.wait_for_selector("#predictions li.prediction")
    assert p.locator("#queue-position").inner_text() == "Photo 1 of 2"
    assert p.locator("#predictions .label").first.inner_text().lower() in lower(CAT_CLASSES)
    p.get_by_role("button", name="Next photo").click()
    p.wait_for_function("() => (document.querySelector('#predictions .label') || {})"
                        ".textContent === 'Espresso'")
    assert p.locator("#queue-position").inner_text() == "Photo 2 of 2"
    assert p.locator("#next-button").is_hidden()


def test_the_keyboard_focus_is_plain_to_see(page):
    p = page.goto("/")
    for _ in range(8):
        p.keyboard.press("Tab")
        if p.evaluate("document.activeElement.id") == "classify-button":
            break
    assert p.evaluate("document.activeElement.id") == "classify-button"
    style, width = p.evaluate("""() => { const s = getComputedStyle(document.activeElement);
                                       return [s.outlineStyle, parseFloat(s.outlineWidth)]; }""")
    assert style == "solid" and width >= 3


def test_upload_page_explanation_view_renders_a_heatmap(page, files):
    p = page.goto("/")
    assert p.locator("#explain-section").is_hidden()
    p.get_by_role("switch", name="How the model sees it").check()
    p.set_input_files("#image-input", str(files["coffee"]))
    heatmap = p.wait_for_selector("#explain-panel img.explain-heatmap")
    p.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=heatmap)
    assert heatmap.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [224, 224]
    titles = p.locator("#explain-panel figcaption strong").all_inner_texts()
    assert len(titles) == 5  # the heatmap, then original → resized → cropped → numbers
    assert "espresso" in titles[0]
    assert [t.strip("→ ") for t in titles[1:]] == [
        "Your photo", "Shrunk", "Square from the middle", "Numbers"]
    sentences = p.locator("#explain-panel .explain-sentences").inner_text()
    assert "espresso" in sentences and sentences.count(". ") >= 1
    assert_for_visitors(p)
    p.locator("#explain-section").scroll_into_view_if_needed()
    screenshot(p, "explain")
    assert_wcag_aa(p)
    # Switching it off hides the panel; on again shows it without asking twice.
    p.get_by_role("switch", name="How the model sees it").uncheck()
    assert p.locator("#explain-section").is_hidden()
    count = sum(1 for url in page.requests if url.endswith("/explain"))
    p.get_by_role("switch", name="How the model sees it").check()
    assert p.locator("#explain-section").is_visible()
    assert sum(1 for url in page.requests if url.endswith("/explain")) == count


# --------------------------------------------------------------------------- kiosk


def test_kiosk_camera_answers_when_the_button_is_pressed_from_the_keyboard(
        page, kiosk_settings):
    p = page.goto("/kiosk")
    wait_state(p, "live")
    p.wait_for_function("() => document.getElementById('camera').videoWidth > 0")
    screenshot(p, "kiosk-start")
    for _ in range(6):  # keyboard only: Tab to the big button, press Enter
        if p.evaluate("document.activeElement.id") == "capture-button":
            break
        p.keyboard.press("Tab")
    assert p.evaluate("document.activeElement.id") == "capture-button"
    assert p.locator("#capture-button").inner_text() == "What is this?"
    p.keyboard.press("Enter")
    labels, words = kiosk_result(p)
    assert len(labels) == 3
    assert labels[0].lower() in lower(CAT_CLASSES), labels  # the fake camera films a cat
    assert words in WORDS
    assert p.locator("#still").is_visible() and p.locator("#camera").is_hidden()
    assert p.evaluate("document.activeElement.id") == "again-button"
    # "Try again" from the keyboard: the focus goes on to the button to press next.
    p.keyboard.press("Enter")
    wait_state(p, "live")
    assert p.evaluate("document.activeElement.id") == "capture-button"


def test_kiosk_answer_and_explanation_fit_a_laptop_and_a_phone(sized, kiosk_settings):
    """The answer with both buttons on the screen; the explanation with its heatmap and
    "Back to the answer" on the screen, nothing sideways; axe finds nothing."""
    p = sized.goto("/kiosk")
    wait_state(p, "live")
    p.wait_for_function("() => document.getElementById('camera').videoWidth > 0")
    assert_on_screen(p, "#capture-button")
    assert_wcag_aa(p)  # the start screen
    p.wait_for_selector('#kiosk[data-live-state="on"]')  # live answers: still on screen
    assert_on_screen(p, "#capture-button", "#live-answer")
    assert_wcag_aa(p)
    p.get_by_role("button", name="What is this?").click()
    kiosk_result(p)
    p.wait_for_timeout(1200)  # let the bars finish growing
    assert_on_screen(p, "#still", "#status", "#again-button", "#explain-button")
    assert_no_sideways_scroll(p)
    screenshot(p, f"kiosk-{sized.size}")
    assert_wcag_aa(p)  # the answer

    p.get_by_role("button", name="How does it see it?").click()
    dialog = p.get_by_role("dialog", name="How the computer sees it")
    assert dialog.is_visible()
    heatmap = p.wait_for_selector("#explain-dialog img.explain-heatmap")
    p.wait_for_function("img => img.complete && img.naturalWidth === 224", arg=heatmap)
    assert p.locator("#explain-dialog .explain-step").count() == 5
    assert_on_screen(p, "#explain-close", "#explain-dialog img.explain-heatmap")
    assert_no_sideways_scroll(p, "#explain-dialog")
    assert_no_sideways_scroll(p)
    # The heatmap says what a heatmap is; "Shrunk" is not "Your photo" again.
    assert "This is a heatmap" in p.locator(".explain-step-heatmap figcaption").inner_text()
    original = p.locator(".explain-step-original img").get_attribute("src")
    assert p.locator(".explain-step-resized img").get_attribute("src") != original
    assert "4 dots" in p.locator(".explain-step-tensor figcaption").inner_text()
    assert_for_visitors(p)
    screenshot(p, f"kiosk-explain-{sized.size}")
    assert_wcag_aa(p)  # the explanation
    p.keyboard.press("Escape")
    assert dialog.is_hidden()
    assert p.evaluate("document.activeElement.id") == "explain-button"


def test_a_class_listening_to_the_explanation_is_not_cut_short(scene_page, kiosk_settings):
    kiosk_settings.update({"idle_seconds": 2})
    p = scene_page.goto("/kiosk")
    wait_state(p, "live")
    p.get_by_role("button", name="What is this?").click()
    kiosk_result(p)
    p.get_by_role("button", name="How does it see it?").click()
    p.wait_for_selector("#explain-dialog img.explain-heatmap")
    p.wait_for_timeout(5000)  # more than twice the idle time, and nobody touches it
    assert p.get_by_role("dialog", name="How the computer sees it").is_visible()
    assert p.locator("#kiosk").get_attribute("data-state") == "result"
    p.get_by_role("button", name="Back to the answer").click()
    wait_state(p, "live", timeout=30_000)  # back at the answer, the idle time applies


def test_kiosk_starts_over_after_the_idle_time(scene_page, kiosk_settings):
    """Once the camera no longer sees what was answered, and nobody touches the screen
    for the idle time (test_kiosk_live_browser.py: the answer stays while it does)."""
    kiosk_settings.update({"idle_seconds": 2, "live": False})  # the start screen: no bars
    p = scene_page.goto("/kiosk")
    wait_state(p, "live")
    start_text = p.locator("#status").inner_text()
    p.get_by_role("button", name="What is this?").click()
    kiosk_result(p)
    wait_state(p, "live", timeout=30_000)  # nobody touched it: back to the start
    assert p.locator("#kiosk-bars .kiosk-bar").count() == 0
    assert p.locator("#status").inner_text() == start_text
    assert p.locator("#camera").is_visible() and p.locator("#capture-button").is_visible()
    assert p.locator("#again-button").is_hidden()


def test_kiosk_auto_capture_and_the_language_follow_the_teacher_settings(
        page, kiosk_settings):
    """The teacher fixes Chinese for the pages: an English browser's kiosk speaks it,
    class names included."""
    kiosk_settings.update({"auto_capture_seconds": 2, "language": "zh_Hans_CN", "bars": 5,
                           "explain": False})
    p = page.goto("/kiosk")
    wait_state(p, "live")
    assert p.locator("html").get_attribute("lang") == "zh-Hans-CN"
    labels, _ = kiosk_result(p)  # nobody pressed anything
    assert len(labels) == 5
    assert labels[0] in chinese_names(CAT_CLASSES), labels
    assert p.locator("#camera").is_visible()  # the live picture stays on
    assert p.locator("#explain-button").is_hidden()


def test_kiosk_falls_back_to_a_photo_when_the_camera_is_refused(
        browser_without_camera_permission, server, kiosk_settings, files):
    context, watched = _watched(browser_without_camera_permission, server)
    try:
        p = watched.goto("/kiosk")
        wait_state(p, "upload")
        assert "switched off" in p.locator("#upload-reason").inner_text()
        assert p.locator("#capture-button").is_hidden()
        assert p.get_by_role("button", name="Choose a photo").is_visible()
        screenshot(p, "kiosk-no-camera")
        # A file that is not a photo: a sentence saying so, no broken-image icon.
        watched.allow_4xx = True
        p.set_input_files("#file-input", str(files["not_a_photo"]))
        wait_state(p, "result")
        p.wait_for_selector("#status.kiosk-status-problem")
        assert "not an image" in p.locator("#status").inner_text()
        assert float(p.locator("#status").evaluate(
            "el => parseFloat(getComputedStyle(el).fontSize)")) <= 26  # not a headline
        assert p.locator("#still").is_hidden()
        assert p.get_by_role("button", name="Choose a photo").is_visible()
        p.set_input_files("#file-input", str(files["coffee"]))
        labels, _ = kiosk_result(p)
        assert labels[0] == "Espresso"
        p.get_by_role("button", name="Try again").click()
        wait_state(p, "upload")
        watched.assert_clean()
    finally:
        context.close()


def test_kiosk_has_nothing_that_leaves_the_page(page, kiosk_settings):
    p = page.goto("/kiosk")
    wait_state(p, "live")
    assert p.locator("a[href]").count() == 0  # no admin link, no link at all
    assert p.locator("textarea, [contenteditable], input:not([type=file])").count() == 0
    assert p.locator("form").count() == 0


def test_settings_change_reaches_a_running_kiosk_at_its_next_start_over(
        scene_page, kiosk_settings):
    kiosk_settings.update({"idle_seconds": 2, "bars": 2})
    p = scene_page.goto("/kiosk")
    wait_state(p, "live")
    p.get_by_role("button", name="What is this?").click()
    labels, _ = kiosk_result(p)
    assert len(labels) == 2
    kiosk_settings.update({"bars": 4})  # the teacher changes it meanwhile
    wait_state(p, "live", timeout=30_000)  # the start-over reads the settings again
    p.wait_for_selector('#kiosk[data-bars="4"]')
    p.get_by_role("button", name="What is this?").click()
    labels, _ = kiosk_result(p)
    assert len(labels) == 4


# --------------------------------------------------------------------------- in Chinese

CHINESE_BROWSER = {"locale": "zh-CN"}  # Accept-Language: zh-CN
ENGLISH_BROWSER = {"locale": "en-US"}


@pytest.mark.parametrize("size, who_chose", [("wide", "the browser"), ("phone", "the browser"),
                                             ("wide", "the teacher")])
def test_the_public_pages_speak_chinese(browser, server, kiosk_settings, files, size,
                                        who_chose):
    """Upload -> answer -> explanation, an error page, kiosk -> a chosen photo's answer ->
    idle countdown -> explanation, in Chinese: asked for by the browser (Accept-Language:
    zh-CN), or fixed by the teacher for an English browser.  No English word of the catalog on any
    of them (testkit/browser.py: english_on_page), the class names in Chinese, axe-core
    finds nothing; at a classroom screen's size and a phone's."""
    if who_chose == "the teacher":
        kiosk_settings.update({"language": "zh_Hans_CN"})
    kiosk_settings.update({"idle_seconds": 10, "live": False})
    language = CHINESE_BROWSER if who_chose == "the browser" else ENGLISH_BROWSER
    context, watched = _watched(browser, server, size, **language)
    shots = size == "wide" and who_chose == "the browser"
    try:
        p = watched.goto("/")
        assert p.locator("html").get_attribute("lang") == "zh-Hans-CN"
        assert_no_english(p, "upload")
        p.set_input_files("#image-input", str(files["cat"]))
        p.wait_for_selector("#predictions li.prediction")
        assert p.locator("#predictions .label").first.inner_text() in chinese_names(
            CAT_CLASSES)
        assert p.locator("#guesses-heading").inner_text() == "最可能的 3 个答案"
        wait_on_screen(p, "#predictions")  # a phone scrolls to the answer
        if size == "phone":
            p.wait_for_timeout(800)  # the bars finish growing
            screenshot(p, "zh-upload-phone")
        p.get_by_role("switch", name="模型怎么看").check()
        heatmap = p.wait_for_selector("#explain-panel img.explain-heatmap")
        p.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=heatmap)
        assert "热力图" in p.locator("#explain-panel").inner_text()
        assert_no_english(p, "answer and explanation")
        assert_wcag_aa(p)
        if shots:
            p.locator("#answer").scroll_into_view_if_needed()
            screenshot(p, "zh-upload")
            p.locator("#explain-section").scroll_into_view_if_needed()
            screenshot(p, "zh-explain")

        watched.allow_4xx = True  # the error page's own 404
        error = p.goto(server.url + "/nowhere")
        assert error.status == 404
        assert "这个地址上什么也没有" in p.locator("main").inner_text()
        assert_no_english(p, "error")
        assert_wcag_aa(p)

        p.clock.install()  # the idle countdown without waiting for it
        p = watched.goto("/kiosk")
        wait_state(p, "live")
        assert_no_english(p, "kiosk start")
        assert p.get_by_role("button", name="这是什么？").is_visible()
        # A photo chosen on the kiosk: its answer's idle time runs at once (an answer of
        # what the camera sees stays while the camera sees it: test_kiosk_live_browser.py).
        p.set_input_files("#file-input", str(files["cat"]))
        labels, words = kiosk_result(p)
        assert labels[0] in chinese_names(CAT_CLASSES), labels
        assert words in {"非常确定", "比较确定", "不太确定", "只是猜测"}
        p.wait_for_timeout(1200)  # the bars finish growing
        assert_on_screen(p, "#status", "#again-button", "#explain-button")
        assert_no_english(p, "kiosk answer")
        assert_wcag_aa(p)
        if shots or size == "phone":
            screenshot(p, "zh-kiosk" + ("-phone" if size == "phone" else ""))
        p.clock.fast_forward(6000)  # 4 s of the 10 left: the countdown shows
        p.wait_for_selector("#idle-note:not([hidden])")
        assert "秒后重新开始" in p.locator("#idle-note").inner_text()
        assert_no_english(p, "kiosk countdown")
        p.get_by_role("button", name="它是怎么看的？").click()
        dialog = p.get_by_role("dialog", name="电脑是怎么看的")
        heatmap = p.wait_for_selector("#explain-dialog img.explain-heatmap")
        p.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=heatmap)
        assert "热力图" in p.locator("#explain-dialog").inner_text()
        assert labels[0] in p.locator(".explain-step-heatmap figcaption").inner_text()
        assert_no_english(p, "kiosk explanation")
        assert_wcag_aa(p)
        if shots or size == "phone":
            screenshot(p, "zh-kiosk-explain" + ("-phone" if size == "phone" else ""))
        p.clock.fast_forward(172_000)  # the explanation's countdown: its last 10 s
        p.wait_for_selector("#explain-idle-note:not([hidden])")
        assert_no_english(p, "explanation countdown")
        p.get_by_role("button", name="回到答案").click()
        assert dialog.is_hidden()
        if who_chose == "the browser" and size == "wide":
            # The switch: the same kiosk in English and back, never leaving it.
            p.get_by_role("button", name="English").click()
            p.wait_for_selector('html[lang="en"] #kiosk[data-state="live"]')
            assert p.url == server.url + "/kiosk"
            p.get_by_role("button", name="中文").click()
            p.wait_for_selector('html[lang="zh-Hans-CN"] #kiosk[data-state="live"]')
        watched.assert_clean()
    finally:
        context.close()


def test_the_seven_photos_are_named_in_chinese_and_in_english_on_the_kiosk(
        browser_without_camera_permission, server, kiosk_settings, tmp_path):
    """Each real photo of testkit/photos.py, chosen on the kiosk: its Chinese name with
    Accept-Language: zh-CN, its English name without."""
    chosen = []
    for item in real_photos():
        path = tmp_path / f"{item.name}.jpg"
        path.write_bytes(encode(item.image, "JPEG", quality=92))
        chosen.append((item, path))
    for language, names in ((CHINESE_BROWSER, chinese_names), (ENGLISH_BROWSER, None)):
        context, watched = _watched(browser_without_camera_permission, server, **language)
        try:
            p = watched.goto("/kiosk")
            wait_state(p, "upload")
            for item, path in chosen:
                p.set_input_files("#file-input", str(path))
                labels, _ = kiosk_result(p)
                expected = names(item.top1) if names else {n.capitalize() for n in item.top1}
                assert labels[0] in expected, (item.name, labels)
                p.get_by_role("button", name="再试一次" if names else "Try again").click()
                wait_state(p, "upload")
            watched.assert_clean()
        finally:
            context.close()
