"""The admin page in a real browser (headless Chromium via Playwright): log in, upload a
checkpoint with the progress bar, try an image with the stored model, activate it; upload
a bare state_dict with its class names typed in."""

from __future__ import annotations

import pytest
from playwright.sync_api import sync_playwright

from tests.browser import CHROMIUM_ARGS, MISSING_BROWSER, chromium_executable
from tests.conftest import FRUIT, encode
from tests.photos import photo

pytestmark = pytest.mark.browser  # without Chromium: fails with what to install, never skips

TOKEN = "browser-admin-token-0123456789"


def test_upload_with_progress_try_and_activate_in_a_browser(start_server, tmp_path,
                                                            fruit_checkpoint, model_files):
    server = start_server("gunicorn", WEB_CONCURRENCY=1, TORCH_THREADS=1,
                          MODEL_DIR=tmp_path / "store", ADMIN_TOKEN=TOKEN)
    server.wait_ready()
    image = tmp_path / "cat.jpg"
    image.write_bytes(encode(photo("chelsea").image, "JPEG"))
    with sync_playwright() as p:
        executable = chromium_executable(p)
        if executable is None:
            pytest.fail(MISSING_BROWSER, pytrace=False)
        browser = p.chromium.launch(args=CHROMIUM_ARGS,
                                    **({"executable_path": executable} if executable else {}))
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.url + "/admin/")
            assert "/admin/login" in page.url
            page.fill("#token", TOKEN)
            page.click("button[type=submit]")
            page.wait_for_selector("#models")

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

            # Activate it through its form.
            row.locator("button", has_text="Activate").click()
            page.wait_for_selector(f"#model-{added} .active-badge")

            # A bare state_dict: the class names typed in go along with the upload.
            page.set_input_files("#checkpoint-input", str(model_files.bare.path))
            page.fill("#classes-input", "\n".join(model_files.bare.classes))
            assert page.input_value("#arch-input") == "auto"
            page.click("#upload-button")
            page.wait_for_url(lambda url: f"added={added}" not in url and "added=" in url,
                              timeout=120_000)
            other = page.url.rsplit("added=", 1)[1]
            text = page.locator(f"#model-{other}").inner_text()
            assert "resnet18 (detected from the weights), 5 classes from the classes field" \
                in text
            assert errors == []
        finally:
            browser.close()
