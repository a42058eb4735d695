"""The Content-Security-Policy in a real browser (headless Chromium via Playwright, real
gunicorn server): every page does everything it normally does — bars, previews, the
explanation with its pictures, the kiosk camera, the admin page's scripts, the
no-JavaScript result page with its bar widths — and the browser reports not a single
CSP violation.  A policy that blocked something the pages need fails here."""

from __future__ import annotations

import pytest
from playwright.sync_api import sync_playwright

from testkit import ops
from testkit.browser import (
    CHROMIUM_ARGS,
    FAKE_CAMERA_ARGS,
    MISSING_BROWSER,
    chromium_executable,
    write_y4m,
)
from testkit.photos import encode, photo

pytestmark = pytest.mark.browser

TOKEN = "csp-admin-token-0123456789"
TIMEOUT_MS = 60_000
# Recorded in every page before its own scripts run.
RECORD_VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"} ` +
                    `(${e.sourceFile || ""}:${e.lineNumber || ""})`);
});
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("csp")
    cat = base / "cat.jpg"
    cat.write_bytes(encode(photo("chelsea").image, "JPEG", quality=90))
    server = ops.launch(base, "csp", WEB_CONCURRENCY=1, TORCH_THREADS=1,
                        MODEL_DIR=base / "models", ADMIN_TOKEN=TOKEN,
                        KIOSK_SETTINGS_FILE=base / "kiosk.json")
    try:
        server.wait_ready()
        with sync_playwright() as pw:
            executable = chromium_executable(pw)
            if executable is None:
                pytest.fail(MISSING_BROWSER, pytrace=False)
            kwargs = {"executable_path": executable} if executable else {}
            camera = write_y4m(photo("chelsea").image, base / "cat.y4m")
            browser = pw.chromium.launch(args=CHROMIUM_ARGS + FAKE_CAMERA_ARGS + [
                f"--use-file-for-fake-video-capture={camera}"], **kwargs)
            try:
                yield server, browser, cat
            finally:
                browser.close()
    finally:
        server.stop()


class Recorder:
    """A browser context whose pages record CSP violations and console errors."""

    def __init__(self, browser, **options):
        self.context = browser.new_context(viewport={"width": 1280, "height": 800},
                                           **options)
        self.context.add_init_script(RECORD_VIOLATIONS)
        self.console: list[str] = []
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.page.on("console", lambda m: self.console.append(m.text)
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.console.append(f"page error: {exc}"))

    def violations(self) -> list[str]:
        found = list(self.page.evaluate("window.__csp || []"))
        return found + [m for m in self.console if "Content Security Policy" in m]

    def close(self):
        self.context.close()


def test_the_upload_page_and_its_explanation_run_under_the_policy(setup):
    server, browser, cat = setup
    rec = Recorder(browser)
    try:
        page = rec.page
        page.goto(server.url + "/")
        page.get_by_role("switch", name="How the model sees it").check()
        page.set_input_files("#image-input", str(cat))
        page.wait_for_selector("#predictions li.prediction")
        page.wait_for_function("() => parseFloat(document.querySelector("
                               "'#predictions .progress-bar').style.width) > 10")
        heatmap = page.wait_for_selector("#explain-panel img.explain-heatmap")
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=heatmap)
        preview = page.locator("#preview")
        assert preview.get_attribute("src").startswith("blob:")
        assert preview.evaluate("img => img.complete && img.naturalWidth > 0")
        assert rec.violations() == [] and rec.console == []
    finally:
        rec.close()


def test_the_no_javascript_result_page_draws_its_bars_under_the_policy(setup):
    """Its bars are sized by style attributes (style-src-attr allows them, nothing else
    inline): the first bar is visibly wider than the third."""
    server, browser, cat = setup
    rec = Recorder(browser, java_script_enabled=False)
    try:
        page = rec.page
        page.goto(server.url + "/")
        page.set_input_files("#image-input", str(cat))
        page.click("#classify-button")
        page.wait_for_selector("#predictions li.prediction")
        widths = [bar.bounding_box()["width"]
                  for bar in page.locator("#predictions .progress-bar").all()]
        assert len(widths) == 3 and widths[0] > 2 * widths[2] and widths[0] > 50
        assert page.locator("#preview").bounding_box()["height"] > 50  # data: URI image
        assert [m for m in rec.console if "Content Security Policy" in m] == []
    finally:
        rec.close()


def test_the_kiosk_camera_and_explanation_run_under_the_policy(setup):
    server, browser, _ = setup
    rec = Recorder(browser)
    try:
        page = rec.page
        page.goto(server.url + "/kiosk")
        page.wait_for_selector('#kiosk[data-state="live"]')
        page.wait_for_function("() => document.getElementById('camera').videoWidth > 0")
        page.get_by_role("button", name="What is this?").click()
        page.wait_for_selector('#kiosk[data-state="result"]')
        page.wait_for_selector("#kiosk-bars .kiosk-bar")
        page.get_by_role("button", name="How does it see it?").click()
        heatmap = page.wait_for_selector("#explain-dialog img.explain-heatmap")
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=heatmap)
        assert rec.violations() == [] and rec.console == []
    finally:
        rec.close()


def test_the_admin_pages_run_under_the_policy(setup):
    server, browser, cat = setup
    rec = Recorder(browser)
    try:
        page = rec.page
        page.goto(server.url + "/admin/")
        page.fill("#token", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_selector("#models")
        page.select_option("#try-model", "builtin")
        page.set_input_files("#try-image", str(cat))
        page.click("#try-button")
        page.wait_for_selector("#try-result .prediction")
        assert rec.violations() == [] and rec.console == []
    finally:
        rec.close()
