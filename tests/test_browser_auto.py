"""Auto in Chromium, the selector's default where a room's Gemma is configured: with Gemma down
(connection refused), refusing (503), its queue full (its /metrics), and back again, the reply
comes, its line says who answered and why, and every turn is saved; a Gemma reply broken off is
kept and "Ask Gemini instead" asks Gemini for it in one click."""

from __future__ import annotations

import time

import pytest
from conftest import api_key_client, running_app, wait_for
from fault_server import REPLY
from playwright.sync_api import Page, expect
from test_browser import GEMINI, bot_texts

from hybridchat.backends import RetryPolicy, VllmBackend, VllmClient
from hybridchat.backends.gemini import GeminiBackend
from hybridchat.store import open_store

pytestmark = pytest.mark.slow  # Chromium

AUTO = "Auto (Gemma, else Gemini 2.5 Flash)"
RECHECK = 1.0  # seconds what Auto found of Gemma holds, here


def room_app(tmp_path, gemma_url: str, gemini_url: str):
    gemma = VllmBackend(VllmClient(gemma_url, retry=RetryPolicy(attempts=2, backoff=0.01), connect_timeout=1),
                        label="Gemma")
    backends = {"gemma": gemma, "gemini": GeminiBackend(api_key_client(gemini_url), label=GEMINI)}
    return running_app(tmp_path, backends, vllm_api_key="room-key-FAKE", auto_recheck_seconds=RECHECK,
                       auto_max_waiting=8, stream_interval=0)


def opened(browser, url: str) -> Page:
    page = browser.new_context().new_page()
    page.goto(url)
    expect(page.locator("#message textarea")).to_be_enabled(timeout=30000)
    assert page.locator("#model input").input_value() == AUTO, "Auto is the default with a room's Gemma"
    return page


def reply_to(page: Page, message: str) -> str:
    """Send ``message``; the reply once it is done (its figures are shown under it)."""
    before = len(bot_texts(page))
    page.fill("#message textarea", message)
    page.press("#message textarea", "Enter")
    return wait_for(lambda: len(texts := bot_texts(page)) > before and " s" in texts[-1].splitlines()[-1]
                    and "⏳" not in texts[-1] and texts[-1], 60)


def saved(store_url: str) -> list:
    store = open_store(store_url, resilient=False)
    try:
        [session] = store.list_sessions(None)
        return store.load(session.session_id)
    finally:
        store.close()


def test_gemma_down_then_refusing_then_queued_then_back(browser, fault_server, stand_in, closed_port_url, tmp_path):
    with room_app(tmp_path / "down", closed_port_url, stand_in) as (url, store_url):
        page = opened(browser, url)
        down = reply_to(page, "Hello?")
        assert down.startswith(f"{GEMINI} · Gemma is not reachable"), down
        assert [(t.model, t.auto_reason) for t in saved(store_url)] == [("gemini", "Gemma is not reachable")]

    with room_app(tmp_path / "flaky", fault_server.url, stand_in) as (url, store_url):
        page = opened(browser, url)
        fault_server.mode, fault_server.failures = "flaky", 100  # its health is fine; it refuses to generate
        refused = reply_to(page, "Hello?")
        assert refused.startswith(f"{GEMINI} · Gemma refused (HTTP 503)"), refused

        fault_server.mode, fault_server.waiting = "ok", 40
        time.sleep(RECHECK)
        queued = reply_to(page, "Still busy?")
        assert queued.startswith(f"{GEMINI} · Gemma's queue is full (40 waiting)"), queued

        fault_server.waiting = 0
        time.sleep(RECHECK)
        back = reply_to(page, "And now?")
        assert back.startswith("Gemma (google/gemma-3-12b-it)") and REPLY in back and "·" not in back.splitlines()[0]
        assert [(t.model, t.auto, t.auto_reason) for t in saved(store_url)] == [
            ("gemini", True, "Gemma refused (HTTP 503)"), ("gemini", True, "Gemma's queue is full (40 waiting)"),
            ("gemma", True, None)]
        # Gemma, back, is sent the whole chat: Gemini's replies too.
        assert [m["content"] for m in fault_server.bodies[-1]["messages"] if m["role"] == "user"] == [
            "Hello?", "Still busy?", "And now?"]
        page.reload()  # the chat reopens on Auto
        expect(page.locator('#chat [data-testid="bot"]')).to_have_count(3, timeout=30000)
        assert page.locator("#model input").input_value() == AUTO


def test_a_reply_broken_off_is_kept_and_gemini_is_asked_in_one_click(browser, fault_server, stand_in, tmp_path):
    fault_server.mode = "truncated"
    with room_app(tmp_path, fault_server.url, stand_in) as (url, store_url):
        page = opened(browser, url)
        page.fill("#message textarea", "Tell me a story.")
        page.press("#message textarea", "Enter")
        ask = page.locator("#ask-fallback")
        expect(ask).to_be_visible(timeout=60000)
        assert "*(interrupted)*" not in bot_texts(page)[-1] and "interrupted" in bot_texts(page)[-1]
        assert ask.inner_text() == "Ask Gemini 2.5 Flash instead"
        [broken] = saved(store_url)
        assert (broken.model, broken.status) == ("gemma", "interrupted") and broken.reply
        ask.click()
        wait_for(lambda: bot_texts(page)[-1].startswith(f"{GEMINI} · Gemma's reply was broken off"), 60)
        expect(ask).to_be_hidden(timeout=15000)
        first, second = saved(store_url)
        assert first.turn_id == broken.turn_id and second.replaces == broken.turn_id and second.model == "gemini"
