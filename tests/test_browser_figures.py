"""Each reply's figures, its thumbs, and a message box as chat users expect it, in Chromium."""

from __future__ import annotations

import re

import pytest
from conftest import api_key_client, running_app, wait_for
from playwright.sync_api import expect
from test_browser import GEMINI, bot_texts, send_and_watch

from hybridchat.backends import VllmBackend, VllmClient
from hybridchat.backends.gemini import GeminiBackend
from hybridchat.chat_view import figures
from hybridchat.store import open_store

pytestmark = pytest.mark.slow  # Chromium

@pytest.fixture(scope="module")
def app(stand_in, tmp_path_factory):
    backends = {
        "gemma": VllmBackend(VllmClient(stand_in), label="Gemma"),
        "gemini": GeminiBackend(api_key_client(stand_in), label=GEMINI),
    }
    with running_app(tmp_path_factory.mktemp("figures"), backends) as running:
        yield running


FIGURES = re.compile(r"(\d+\.\d) s · (?:(\d+) tok/s · )?([\d,]+) → ([\d,]+) tokens · (\$[\d.]+)( est\.)?")


def test_the_figures_line_shows_what_the_stand_ins_usage_implies_and_thumbs_are_saved(browser, app):
    url, store_url = app
    page = browser.new_context().new_page()
    page.goto(url)
    page.wait_for_selector("#message textarea")
    send_and_watch(page, "What is the capital of France?", 0)
    shown = bot_texts(page)[0]
    found = FIGURES.search(shown)
    assert found, shown
    store = open_store(store_url, resilient=False)
    sessions = store.list_sessions(None)
    [turn] = [t for s in sessions for t in store.load(s.session_id) if t.user == "What is the capital of France?"]
    # The numbers are the stand-in's own usage, priced by the table: as figures() writes them.
    assert found.group(0) == figures(turn), (found.group(0), figures(turn))
    assert (int(found.group(3).replace(",", "")), int(found.group(4).replace(",", ""))) == (
        turn.prompt_tokens, turn.completion_tokens)
    assert found.group(6) == " est."  # Gemma's is a share of GPU hours

    reply = page.locator('#chat [data-testid="bot"]').first
    reply.hover()
    page.locator("#chat").get_by_role("button", name="Like", exact=True).first.click()
    wait_for(lambda: store.load(sessions[0].session_id)[0].vote == "up", 15)
    page.locator("#chat").get_by_role("button", name="Dislike", exact=True).first.click()
    wait_for(lambda: store.load(sessions[0].session_id)[0].vote == "down", 15)
    store.close()


def test_the_message_box_spans_the_width_with_send_beside_it(browser, app):
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(app.url)
    expect(page.locator("#message textarea")).to_be_enabled(timeout=30000)
    box, send, chat = (page.locator(s).bounding_box() for s in ("#message", "#send", "#chat"))
    assert box["width"] > 0.75 * chat["width"], (box, chat)
    assert send["width"] < box["width"] / 5 and abs(send["y"] - box["y"]) < box["height"], (send, box)
    assert send["x"] > box["x"] + box["width"] - 1  # beside it, on its right
