"""The chat service under the page, with real backends and store: a turn's timings, Stop, replies
without streaming, and retry."""

from __future__ import annotations

import pytest
from conftest import Recording, api_key_client
from fault_server import REPLY

from bench.servers import Pace, paced_server
from hybridchat.backends import (
    ChatBackend,
    GenerationParams,
    ReplyStream,
    VllmBackend,
    VllmClient,
)
from hybridchat.backends.base import CONVERSATION_HEADER
from hybridchat.backends.gemini import GeminiBackend
from hybridchat.chat import ChatService, Conversation
from hybridchat.errors import InputRefused
from hybridchat.store import open_store


class Stoppable(ChatBackend):
    """A real backend whose replies it keeps (so nothing but an explicit close ends them)."""

    def __init__(self, inner: ChatBackend):
        self.inner, self.name, self.label = inner, inner.name, inner.label
        self.replies: list[ReplyStream] = []
        self.closed = 0

    def stream(self, messages, params):
        def pieces():
            try:
                yield from self.inner.stream(messages, params)
            finally:
                self.closed += 1

        self.replies.append(ReplyStream(pieces()))
        return self.replies[-1]

    def health(self):
        return self.inner.health()


def test_each_saved_turn_says_how_long_its_first_piece_and_whole_reply_took(tmp_path):
    with paced_server(Pace(ttft=0.3, tokens=6, gap=0.1)) as (url, _):
        service = ChatService({"gemma": VllmBackend(VllmClient(url))}, open_store(f"sqlite:///{tmp_path}/h.db"))
        conversation = Conversation("visitor:alice")
        list(service.respond(conversation, "Hi", "gemma", GenerationParams(max_tokens=6)))
    [saved] = service.store.load(conversation.session_id)
    assert 300 <= saved.first_token_ms <= saved.latency_ms - 400, (saved.first_token_ms, saved.latency_ms)


def test_stop_closes_the_models_stream_and_keeps_what_came(tmp_path, stand_in):
    backend = Stoppable(VllmBackend(VllmClient(stand_in), label="Gemma"))
    service = ChatService({"gemma": backend}, open_store(f"sqlite:///{tmp_path}/h.db"))
    conversation = Conversation("visitor:alice")
    turn = service.respond(conversation, "Tell me a story", "gemma", GenerationParams(max_tokens=64))
    first = next(turn)
    turn.close()  # what Gradio does when the visitor presses Stop
    assert backend.closed == 1, "the model's stream is closed at once, not when collected"
    [saved] = service.store.load(conversation.session_id)
    assert saved.status == "interrupted" and saved.reply == first.reply


def test_without_streaming_each_reply_is_one_blocking_call(tmp_path, fault_server):
    """HYBRIDCHAT_STREAM=false, the codelab's design: the models are asked for the whole reply."""
    backends = {
        "gemma": VllmBackend(VllmClient(fault_server.url, model="m")),
        "gemini": GeminiBackend(api_key_client(fault_server.url)),
    }
    service = ChatService(backends, open_store(f"sqlite:///{tmp_path}/h.db"), stream=False)
    conversation = Conversation("visitor:alice")
    for model in backends:
        assert [p.reply for p in service.respond(conversation, "Hi", model, GenerationParams())] == [REPLY, REPLY]
    assert [r for r in fault_server.requests if r.startswith("POST")] == [
        "POST /v1/chat/completions", "POST /v1/models/gemini-2.5-flash:generateContent"
    ]
    gemma_turn = service.store.load(conversation.session_id)[0]
    assert (gemma_turn.prompt_tokens, gemma_turn.status) == (3, "ok"), "the usage only a whole answer carries"


def test_retry_replaces_the_last_reply_for_every_model_after_a_reload_and_the_store_keeps_both(tmp_path, stand_in):
    backend = Recording(VllmBackend(VllmClient(stand_in), label="Gemma"))
    service = ChatService({"gemma": backend}, open_store(f"sqlite:///{tmp_path}/h.db"))
    params = GenerationParams(max_tokens=4)
    conversation = Conversation("visitor:alice")
    for message in ("Hi", "Tell me a joke"):
        list(service.respond(conversation, message, "gemma", params))
    first_try = conversation.turns[-1]
    *_, retried = service.retry(conversation, "gemma", params)
    assert retried.turn.replaces == first_try.turn_id

    reloaded = service.open("visitor:alice", conversation.session_id)  # a new tab, or a restart
    assert [t.turn_id for t in reloaded.turns] == [t.turn_id for t in conversation.turns]
    list(service.respond(reloaded, "Another", "gemma", params))
    sent = [m.content for m in backend.histories[-1] if m.role == "user"]
    assert sent == ["Hi", "Tell me a joke"], "the model sees the joke asked once: the retry's answer"
    saved = service.store.load(conversation.session_id)
    assert [t.user for t in saved] == ["Hi", "Tell me a joke", "Tell me a joke", "Another"]
    assert saved[1].turn_id == first_try.turn_id and saved[2].replaces == first_try.turn_id


def test_a_retry_refused_before_it_begins_leaves_the_last_reply_standing(tmp_path, stand_in):
    service = ChatService({"gemma": VllmBackend(VllmClient(stand_in))}, open_store(f"sqlite:///{tmp_path}/h.db"))
    conversation = Conversation("visitor:alice")
    list(service.respond(conversation, "Hi", "gemma", GenerationParams(max_tokens=4)))
    with pytest.raises(InputRefused, match="Unknown model"):
        list(service.retry(conversation, "nonesuch", GenerationParams(max_tokens=4)))
    assert [t.user for t in conversation.turns] == ["Hi"] and not conversation.replaced


def test_gemmas_server_is_told_the_conversation_by_a_digest_and_the_turn_does_not_keep_it(fault_server, tmp_path):
    """For a balancer in front of replicas (bench/replicas.py): one header, the same for every
    turn of a chat after its first, other for another chat, and never the session id itself."""
    service = ChatService({"gemma": VllmBackend(VllmClient(fault_server.url))}, open_store(f"sqlite:///{tmp_path}/h.db"))
    alice, bob = Conversation("visitor:alice"), Conversation("visitor:bob")
    for chat in (alice, alice, alice, bob, bob):
        list(service.respond(chat, "Hi", "gemma", GenerationParams(max_tokens=8)))
    sent = [headers.get(CONVERSATION_HEADER.lower()) for headers in fault_server.headers]
    assert sent[0] is None and sent[3] is None, "a chat's first turn has no session yet"
    assert sent[1] == sent[2] != sent[4] and len(sent[1]) == 16
    assert alice.session_id not in sent and all("conversation" not in t.params for t in service.store.load(alice.session_id))
