"""The chat page at `/` in headless Chromium (Debian's package): type a message, send
it, wait for the streamed reply, and take a screenshot."""

import os
import shutil

import pytest
import requests

CHROMIUM = shutil.which("chromium")


def test_the_page_is_served(server):
    r = requests.get(server.url + "/", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "/v1/chat/completions" in r.text


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("MCC_REQUIRE_CHROMIUM"), reason="no chromium")
def test_a_message_streams_a_reply_in_chromium(server, tmp_path):
    assert CHROMIUM, "MCC_REQUIRE_CHROMIUM is set but chromium is not installed"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        page = browser.new_page(viewport={"width": 900, "height": 560})
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('context')")
        page.fill("#input", "What is the capital of France?")
        page.click("#send")
        page.wait_for_function("document.body.dataset.done === '1'", timeout=60000)
        reply = page.inner_text(".msg.assistant")
        assert "tokens" in reply and len(reply) > 20, reply
        assert page.locator(".msg.error").count() == 0
        shot = os.environ.get("MCC_PAGE_SCREENSHOT", str(tmp_path / "page.png"))
        page.screenshot(path=shot)
        browser.close()
    assert os.path.getsize(shot) > 10000
