"""The admin pages in a real browser (headless Chromium via Playwright) against a real
gunicorn server: log in, upload a checkpoint with the progress bar, try an image with the
stored model, rename it, activate it, roll back and redo; upload a bare state_dict with its
class names typed in; on a phone, every model's buttons on the screen and nothing scrolling
sideways; right after an activation the page says "Switching to …" until this worker
serves the model, never that it serves the old one; axe-core finds nothing on any admin
page at either size."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from playwright.sync_api import sync_playwright

from testkit import ROOT
from testkit.browser import (
    SIZES,
    assert_no_sideways_scroll,
    assert_on_screen,
    assert_wcag_aa,
    launch,
    screenshot,
)
from testkit.photos import encode, photo
from testkit.weights import FRUIT

pytestmark = pytest.mark.browser  # without Chromium: fails with what to install, never skips

TOKEN = "browser-admin-token-0123456789"


@pytest.fixture()
def chromium():
    with sync_playwright() as p:
        browser = launch(p)
        try:
            yield browser
        finally:
            browser.close()


def open_page(chromium, size="desktop"):
    page = chromium.new_context(**SIZES[size]).new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    return page


def log_in(page, server):
    page.goto(server.url + "/admin/")
    assert "/admin/login" in page.url
    assert_no_sideways_scroll(page)
    assert_wcag_aa(page)  # the login form
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_selector("#models")


def test_upload_with_progress_try_rename_activate_roll_back_and_redo(
        start_server, tmp_path, fruit_checkpoint, model_files, chromium):
    server = start_server("gunicorn", WEB_CONCURRENCY=1, TORCH_THREADS=1,
                          MODEL_DIR=tmp_path / "store", ADMIN_TOKEN=TOKEN)
    server.wait_ready()
    image = tmp_path / "cat.jpg"
    image.write_bytes(encode(photo("chelsea").image, "JPEG"))
    page = open_page(chromium)
    log_in(page, server)
    # The owner is told what the public page does not say: how to get ResNet18.
    assert "model_loader download" in page.locator("#model-notice").inner_text()

    # Upload: the progress bar fills, then the page shows the new model.
    page.set_input_files("#checkpoint-input", str(fruit_checkpoint))
    page.fill("#name-input", "Fruit in the browser")
    page.evaluate("""() => {  // remember every progress value across the reload
        const bar = document.getElementById("upload-progress");
        new MutationObserver(() => {
          const seen = JSON.parse(sessionStorage.getItem("progress") || "[]");
          seen.push(Number(bar.getAttribute("aria-valuenow")));
          sessionStorage.setItem("progress", JSON.stringify(seen));
        }).observe(bar, {attributes: true, attributeFilter: ["aria-valuenow"]});
    }""")
    page.click("#upload-button")
    page.wait_for_url("**/admin/?added=*", timeout=120_000)
    progress = page.evaluate("JSON.parse(sessionStorage.getItem('progress'))")
    assert progress[-1] == 100 and progress == sorted(progress)
    added = page.url.rsplit("added=", 1)[1]
    row = page.locator(f"#model-{added}")
    assert "Fruit in the browser" in row.inner_text()
    assert "3 classes" in row.inner_text()
    # Metrics in words: "Validation accuracy 91.3%", not "val_accuracy 0.913".
    assert re.search(r"Validation accuracy\s+91\.3%", row.locator(".metrics").inner_text())
    assert "val_accuracy" not in row.inner_text()
    assert_wcag_aa(page)

    # Try an image with it, without activating it: bars drawn by admin.js.
    page.select_option("#try-model", added)
    page.set_input_files("#try-image", str(image))
    page.click("#try-button")
    page.wait_for_selector("#try-result .prediction")
    labels = page.locator("#try-result .label").all_inner_texts()
    assert sorted(labels) == sorted(FRUIT)
    assert "Fruit in the browser" in page.locator("#try-result").inner_text()
    assert page.locator(".active-badge").count() == 1
    assert page.locator("#model-builtin .active-badge").count() == 1

    # Rename it.
    row.locator("summary", has_text="Rename").click()
    row.locator(".rename-input").fill("Fruit, season 2")
    row.get_by_role("button", name="Save name").click()
    page.wait_for_selector(".flash")
    assert "Renamed" in page.locator(".flash").inner_text()
    assert row.locator(".model-name").inner_text() == "Fruit, season 2"

    # Activate it through its form; the line under the title follows.
    row.locator("button", has_text="Activate").click()
    page.wait_for_selector(f"#model-{added} .active-badge")
    page.wait_for_selector('#serving[data-state="serving"]', timeout=120_000)
    assert "serves Fruit, season 2" in page.locator("#serving").inner_text()

    # Roll back, then redo: the fruit model is active again.
    page.get_by_role("button", name="Roll back").click()
    page.wait_for_selector("#model-builtin .active-badge")
    assert page.get_by_role("button", name="Redo").is_visible()
    page.get_by_role("button", name="Redo").click()
    page.wait_for_selector(f"#model-{added} .active-badge")
    assert page.get_by_role("button", name="Redo").count() == 0

    # A bare state_dict: the class names typed in go along with the upload.
    page.set_input_files("#checkpoint-input", str(model_files.bare.path))
    page.fill("#classes-input", "\n".join(model_files.bare.classes))
    assert page.input_value("#arch-input") == "auto"
    page.click("#upload-button")
    page.wait_for_url(lambda url: f"added={added}" not in url and "added=" in url,
                      timeout=120_000)
    other = page.url.rsplit("added=", 1)[1]
    text = page.locator(f"#model-{other}").inner_text()
    assert "resnet18 (detected from the weights), 5 classes from the classes field" in text
    assert page.errors == []


def test_the_admin_pages_fit_a_phone_and_say_when_a_switch_is_done(
        start_server, tmp_path, fruit_checkpoint, tools_checkpoint, chromium):
    store = tmp_path / "store"
    server = start_server("gunicorn", WEB_CONCURRENCY=1, TORCH_THREADS=1, MODEL_DIR=store,
                          ADMIN_TOKEN=TOKEN)
    server.wait_ready()
    # Models added by the command line (another process): this worker has not loaded
    # them, so an activation takes it a moment.
    env = {**os.environ, "MODEL_DIR": str(store)}
    ids = {}
    for name, path in (("Fruit", fruit_checkpoint), ("Tools", tools_checkpoint)):
        out = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "models", "add",
                              str(path), "--name", name], cwd=ROOT, env=env, check=True,
                             capture_output=True, text=True, timeout=300).stdout
        ids[name] = re.search(r"stored (\S+)", out).group(1)

    for size in SIZES:
        page = open_page(chromium, size)
        log_in(page, server)
        assert_no_sideways_scroll(page)
        for row in page.locator("#models tbody tr").all():  # every model's buttons
            buttons = row.locator(".model-actions button")
            for n in range(buttons.count()):
                buttons.nth(n).scroll_into_view_if_needed()
                assert_on_screen(page, f"#{row.get_attribute('id')} .model-actions "
                                       f"form:nth-of-type({n + 1}) button")
        screenshot(page, f"admin-{size}", full_page=True)
        assert_wcag_aa(page)
        for path in ("/admin/kiosk", "/admin/teach"):
            page.goto(server.url + path)
            assert_no_sideways_scroll(page)
            assert_wcag_aa(page)
        assert page.errors == []
        page.context.close()

    # Activate from the phone: the line never claims the old model is still served.
    page = open_page(chromium, "phone")
    log_in(page, server)
    page.locator(f"#model-{ids['Tools']} button", has_text="Activate").click()
    page.wait_for_selector(f"#model-{ids['Tools']} .active-badge")
    first = page.locator("#serving").inner_text()
    assert first.startswith("Switching to Tools") or (
        first.startswith("This worker") and "serves Tools" in first), first
    page.wait_for_selector('#serving[data-state="serving"]', timeout=120_000)
    assert "serves Tools" in page.locator("#serving").inner_text()
    assert page.errors == []
