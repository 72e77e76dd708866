"""Side by side in Chromium: both replies stream at once, a pick continues the chat, one model
failing leaves the other to pick (and the chat downloads with both), and blind mode names the
models only after the pick."""

from __future__ import annotations

import time

import pytest
from conftest import Recording, api_key_client, running_app, wait_for
from playwright.sync_api import Page, expect
from test_browser import GEMINI

from bench.servers import Pace, paced_server
from hybridchat.backends import VllmBackend, VllmClient
from hybridchat.backends.gemini import GeminiBackend
from hybridchat.history import Message
from hybridchat.store import open_store

pytestmark = pytest.mark.slow  # Chromium

SIDE_BY_SIDE = "Gemma and Gemini 2.5 Flash, side by side"


def backends(gemma_url: str, gemini_url: str) -> dict[str, Recording]:
    models = {"gemma": Recording(VllmBackend(VllmClient(gemma_url), label="Gemma")),
              "gemini": Recording(GeminiBackend(api_key_client(gemini_url), label=GEMINI))}
    for model in models.values():
        # The slider's start: short replies, which the tiny model's context holds two turns of.
        model.default_max_tokens = 24
    return models


def opened(browser, url: str) -> Page:
    page = browser.new_context().new_page()
    page.goto(url)
    expect(page.locator("#message textarea")).to_be_enabled(timeout=30000)
    page.click("#model input")
    page.get_by_role("option", name=SIDE_BY_SIDE).click()
    return page


def send(page: Page, message: str) -> None:
    page.fill("#message textarea", message)
    page.press("#message textarea", "Enter")


def columns(page: Page) -> tuple[str, str]:
    left, right = (page.locator(f"#pair-reply-{c}").inner_text() for c in (0, 1))
    return left, right


def test_both_stream_at_once_and_a_pick_continues_the_chat(browser, tmp_path):
    # Paced: the tiny model's whole reply can reach a loaded CI machine's page in one update.
    with paced_server(Pace(ttft=0.1, tokens=20, gap=0.1)) as (paced_url, _), \
            running_app(tmp_path, models := backends(paced_url, paced_url)) as (url, store_url):
        page = opened(browser, url)
        send(page, "Name a colour.")
        seen: list[tuple[str, str]] = []

        def both_done() -> bool:
            now = columns(page)
            if not seen or now != seen[-1]:
                seen.append(now)
            return page.locator("#pick-0").is_visible() and page.locator("#pick-1").is_visible()

        wait_for(both_done, 90, every=0.03)
        assert "Gemma" in seen[-1][0] and GEMINI in seen[-1][1]  # each column under its model's name
        # Both grew while neither was done: the two replies streamed at the same time.
        growing = [(a, b) for a, b in seen if "…" not in a and "…" not in b]
        assert len({a for a, _ in growing}) > 1 and len({b for _, b in growing}) > 1, seen[-3:]

        page.click("#pick-1")  # Continue with Gemini
        expect(page.locator("#pair")).to_be_hidden(timeout=15000)
        store = open_store(store_url, resilient=False)
        [session] = store.list_sessions(None)
        picked = {t.pair_column: t for t in store.load(session.session_id)}
        assert (picked[0].picked, picked[1].picked) == (False, True)
        # The chat shows the picked reply, and the other folded under it.
        expect(page.locator("#chat").get_by_text("The other reply, not picked")).to_be_visible()

        send(page, "Why that one?")
        wait_for(lambda: page.locator("#pick-0").is_visible() and page.locator("#pick-1").is_visible(), 90)
        for model in models.values():  # each model's next request carries the picked reply only
            assert model.histories[-1] == [Message("user", "Name a colour."),
                                           Message("assistant", picked[1].reply)]
        store.close()


def test_one_model_failing_shows_in_its_column_and_the_other_can_be_picked(browser, stand_in, fault_server,
                                                                          tmp_path):
    fault_server.mode = "server_error"
    with running_app(tmp_path, backends(stand_in, fault_server.url), retry_backoff=0.01) as (url, store_url):
        page = opened(browser, url)
        page.click("#download")
        expect(page.get_by_text("Nothing to download yet")).to_be_visible(timeout=15000)
        send(page, "Hi")
        wait_for(lambda: page.locator("#pick-0").is_visible(), 90)
        wait_for(lambda: "⚠️" in columns(page)[1], 30)
        assert "⚠️" not in columns(page)[0] and "Traceback" not in columns(page)[1]
        page.click("#pick-0")
        expect(page.locator("#pair")).to_be_hidden(timeout=15000)
        store = open_store(store_url, resilient=False)
        [session] = store.list_sessions(None)
        turns = {t.pair_column: t for t in store.load(session.session_id)}
        assert {column: t.picked for column, t in turns.items()} == {0: True, 1: False}
        store.close()
        # Downloaded in one click: both replies, which one was picked, the error, the figures.
        with page.expect_download(timeout=30000) as download:
            page.click("#download")
        assert download.value.suggested_filename.startswith("chat-hi-")
        saved = download.value.path().read_text()
        assert "**gemma** _(side by side, picked)_:" in saved and turns[0].reply in saved
        assert "**gemini** _(side by side, not picked)_:" in saved and f"_({turns[1].error})_" in saved
        assert "tok/s" in saved, "the picked reply's figures"


def test_blind_mode_names_the_models_only_after_the_pick(browser, stand_in, tmp_path):
    with running_app(tmp_path, backends(stand_in, stand_in)) as (url, _):
        page = opened(browser, url)
        page.get_by_role("button", name="Settings ▼").click()
        page.locator("#blind input").check()
        time.sleep(0.5)  # the setting's change event lands before the message
        send(page, "Name a colour.")
        wait_for(lambda: page.locator("#pick-0").is_visible() and page.locator("#pick-1").is_visible(), 90)
        left, right = columns(page)
        assert left.startswith("Model A") and right.startswith("Model B")
        assert "Gemma" not in left + right and "Gemini" not in left + right
        expect(page.locator("#pick-0")).to_have_text("Continue with Model A")
        page.click("#pick-0")
        expect(page.locator("#pair")).to_be_hidden(timeout=15000)
        shown = page.locator("#chat").inner_text()
        assert "Gemma" in shown and GEMINI in shown  # revealed: the pick and the other reply, named
