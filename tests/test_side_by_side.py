"""Side by side at the service: both replies stream at once from the same context, a pick
continues the chat, a failing model ends only its own column, Stop stops both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import Recording, api_key_client
from fault_server import REPLY

from bench.servers import Pace, paced_server
from hybridchat.backends import GenerationParams, VllmBackend, VllmClient
from hybridchat.backends.gemini import GeminiBackend
from hybridchat.chat import ChatService, Conversation
from hybridchat.errors import InputRefused
from hybridchat.history import Message
from hybridchat.side_by_side import open_pair, pick, respond_pair, retry_pair
from hybridchat.store import open_store

PARAMS = GenerationParams(max_tokens=8, temperature=0.1)


@pytest.fixture
def service(stand_in, tmp_path):
    backends = {"gemma": Recording(VllmBackend(VllmClient(stand_in), label="Gemma")),
                "gemini": Recording(GeminiBackend(api_key_client(stand_in), label="Gemini"))}
    return ChatService(backends, open_store(f"sqlite:///{tmp_path}/h.db"))


def test_both_stream_at_once_and_a_pick_continues_the_chat_with_that_reply_only(service):
    chat = Conversation("visitor:alice")
    updates = list(respond_pair(service, chat, "Name a colour.", ("gemma", "gemini"), PARAMS))
    left, right = updates[-1].columns
    assert left.turn and right.turn and left.turn.pair == right.turn.pair
    # Both had pieces shown before either was done: they streamed together.
    assert any(u.columns[0] and u.columns[1] and not (u.columns[0].turn and u.columns[1].turn) for u in updates)
    saved = service.store.load(chat.session_id)
    assert {t.pair_column for t in saved} == {0, 1} and len({t.pair for t in saved}) == 1
    assert len(open_pair(chat)) == 2
    pick(service, chat, right.turn.turn_id)
    assert {t.turn_id: t.picked for t in service.store.load(chat.session_id)} == {
        left.turn.turn_id: False, right.turn.turn_id: True}
    list(service.respond(chat, "Another?", "gemma", PARAMS))
    list(service.respond(chat, "And one more?", "gemini", PARAMS))
    for backend in service.backends.values():  # each model's next request carries the picked reply only
        assert backend.histories[-1][:2] == [Message("user", "Name a colour."), Message("assistant", right.turn.reply)]
    with pytest.raises(InputRefused):
        pick(service, chat, left.turn.turn_id)  # the chat went on: that pair is closed
    # Reopened from the store, the chat goes on from the same reply.
    again = service.open("visitor:alice", chat.session_id)
    assert again.context()[0].reply == right.turn.reply and len(again.turns) == 4


def test_a_message_sent_before_a_pick_goes_on_with_the_left_reply_and_counts_no_pick(service):
    chat = Conversation("visitor:alice")
    left, _ = list(respond_pair(service, chat, "Name a colour.", ("gemma", "gemini"), PARAMS))[-1].columns
    list(service.respond(chat, "Why?", "gemini", PARAMS))
    assert service.backends["gemini"].histories[-1] == [Message("user", "Name a colour."),
                                                        Message("assistant", left.turn.reply)]
    assert all(t.picked is None for t in service.store.load(chat.session_id))
    assert open_pair(chat) == []


def test_a_failing_model_ends_its_own_column_and_the_other_can_be_picked(stand_in, fault_server, tmp_path):
    fault_server.mode = "server_error"
    backends = {"gemma": VllmBackend(VllmClient(stand_in), label="Gemma"),
                "gemini": GeminiBackend(api_key_client(fault_server.url), label="Gemini")}
    service = ChatService(backends, open_store(f"sqlite:///{tmp_path}/h.db"))
    chat = Conversation("visitor:alice")
    left, right = list(respond_pair(service, chat, "Hi", ("gemma", "gemini"), PARAMS))[-1].columns
    assert left.turn.status in ("ok", "cut_off") and left.turn.reply
    assert right.turn.status == "error" and right.turn.error and REPLY not in right.turn.reply
    pick(service, chat, left.turn.turn_id)
    assert [t.reply for t in chat.context()] == [left.turn.reply]


def test_stop_stops_both_and_keeps_what_came(tmp_path):
    with paced_server(Pace(ttft=0.05, tokens=200, gap=0.05)) as (url, _):
        backends = {"a": VllmBackend(VllmClient(url), label="A"), "b": VllmBackend(VllmClient(url), label="B")}
        service = ChatService(backends, open_store(f"sqlite:///{tmp_path}/h.db"))
        chat = Conversation("visitor:alice")
        pair = respond_pair(service, chat, "Tell me a story", ("a", "b"), GenerationParams(max_tokens=200))
        for update in pair:
            if all(c is not None and c.reply for c in update.columns):
                break
        started = time.monotonic()
        pair.close()  # what Gradio does on Stop
        assert time.monotonic() - started < 5
    saved = service.store.load(chat.session_id)
    assert sorted(t.pair_column for t in saved) == [0, 1]
    assert all(t.status == "interrupted" and t.reply for t in saved)


def test_a_pair_after_a_pick_is_given_the_picked_reply(service):
    chat = Conversation("visitor:alice")
    _, right = list(respond_pair(service, chat, "Name a colour.", ("gemma", "gemini"), PARAMS))[-1].columns
    pick(service, chat, right.turn.turn_id)
    list(respond_pair(service, chat, "Why that one?", ("gemma", "gemini"), PARAMS))
    for backend in service.backends.values():
        assert backend.histories[-1] == [Message("user", "Name a colour."), Message("assistant", right.turn.reply)]


def test_export_keeps_both_replies_the_pick_the_votes_and_the_figures(service, tmp_path):
    chat = Conversation("visitor:alice")
    _, right = list(respond_pair(service, chat, "Name a colour.", ("gemma", "gemini"), PARAMS))[-1].columns
    pick(service, chat, right.turn.turn_id)
    service.vote(chat, right.turn.turn_id, "up")
    env = {**os.environ, "HYBRIDCHAT_STORE_URL": f"sqlite:///{tmp_path}/h.db"}
    export = [sys.executable, "-m", "hybridchat.cli", "sessions", "export", chat.session_id]
    data = json.loads(subprocess.run(export, env=env, capture_output=True, text=True, check=True).stdout)
    saved = {t["pair_column"]: t for t in data["turns"]}
    assert (saved[0]["picked"], saved[1]["picked"], saved[1]["vote"]) == (False, True, "up")
    assert saved[0]["pair"] == saved[1]["pair"] and saved[1]["prompt_tokens"] and saved[1]["latency_ms"]
    markdown = subprocess.run([*export, "--format", "md"], env=env, capture_output=True, text=True, check=True).stdout
    assert markdown.count("**You**") == 1  # asked once, answered twice
    assert "side by side, picked; 👍" in markdown and "side by side, not picked" in markdown
    assert f"{saved[1]['prompt_tokens']} → {saved[1]['completion_tokens']} tokens" in markdown


def test_retry_asks_both_again_and_the_new_pair_takes_the_old_ones_place(service):
    chat = Conversation("visitor:alice")
    old = list(respond_pair(service, chat, "Name a colour.", ("gemma", "gemini"), PARAMS))[-1].columns
    new = list(retry_pair(service, chat, PARAMS))[-1].columns
    assert [c.turn.replaces for c in new] == [c.turn.turn_id for c in old]
    assert {t.turn_id for t in chat.turns} == {c.turn.turn_id for c in new}  # the old pair no longer shown
    assert len(service.store.load(chat.session_id)) == 4  # and still saved
    reopened = service.open("visitor:alice", chat.session_id)
    assert {t.turn_id for t in reopened.turns} == {c.turn.turn_id for c in new} and len(open_pair(reopened)) == 2
