"""README's picture of the app: ``python -m bench.screenshot`` (``make screenshot``).

Runs what ``make run`` runs (the stand-in on the embedded model, the app), has one chat in
Debian's Chromium through Playwright, as the browser tests do (a question to Gemma, then one to
Gemini about the first, then one to both side by side), and saves the page as
``docs/images/chat.png``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hybridchat.app import create_app
from hybridchat.config import Settings
from hybridchat.lab.local import BackgroundServer, free_port, stop_process, wait_until_serving

IMAGE = Path(__file__).resolve().parents[1] / "docs" / "images" / "chat.png"
TURNS = [("Gemma", "What is the capital of France? Answer in one sentence."),
         ("Gemini", "And what did I just ask you about?")]
SIDE_BY_SIDE = ("side by side", "Name one famous building in that city.")


def answered(page, replies: int, timeout: float = 300) -> None:  # type: ignore[no-untyped-def]
    """Wait until the chat shows ``replies`` replies and the last one has stopped changing."""
    deadline, last, still = time.monotonic() + timeout, "", 0
    while time.monotonic() < deadline:
        texts = page.locator('#chat [data-testid="bot"]').all_inner_texts()
        current = texts[replies - 1] if len(texts) >= replies else ""
        still = still + 1 if current and current == last else 0
        if still >= 10:  # ten looks, 0.3 s apart, the same
            return
        last = current
        time.sleep(0.3)
    raise TimeoutError(f"no whole reply {replies} in {timeout:g} s")


def main() -> None:
    from playwright.sync_api import sync_playwright

    scratch = Path(tempfile.mkdtemp(prefix="hybridchat-screenshot-"))
    settings = Settings(local_port=free_port(), store_url=f"sqlite:///{scratch}/history.db",
                        secret_file=str(scratch / "secret"))
    stand_in = subprocess.Popen([sys.executable, "-m", "hybridchat.cli", "serve-local", "--port", str(settings.local_port)])
    try:
        wait_until_serving(settings.local_url, stand_in)
        with BackgroundServer(create_app(settings)) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=shutil.which("chromium"),
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1100, "height": 1300})
            page.goto(url)
            page.wait_for_selector("#message textarea")
            for number, (model, message) in enumerate(TURNS, 1):
                page.click("#model input")
                page.get_by_role("option", name=re.compile(model)).first.click()  # not the side-by-side entry
                page.fill("#message textarea", message)
                page.press("#message textarea", "Enter")
                answered(page, number)
            page.click("#model input")
            page.get_by_role("option", name=re.compile(SIDE_BY_SIDE[0])).click()
            page.fill("#message textarea", SIDE_BY_SIDE[1])
            page.press("#message textarea", "Enter")
            page.locator("#pick-1").wait_for(state="visible", timeout=300_000)  # both replies are done
            IMAGE.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(IMAGE))
            browser.close()
    finally:
        stop_process(stand_in)
    print(f"wrote {IMAGE}")


if __name__ == "__main__":
    main()
