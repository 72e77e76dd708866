"""Auto through the chat service: Gemma answers while it can; down, refusing, queued past the
limit or outgrown by the chat, Gemini answers with the reason, and no turn is lost; back again,
Gemma answers once the last finding has expired. A reply broken off is kept, and Gemini is asked
for it only when the visitor says so. The stand-in and fault server's ``/metrics`` speak vLLM's
names (tests/test_vllm_engine.py holds them to the real engine's)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import api_key_client
from fault_server import REPLY
from prometheus_client.parser import text_string_to_metric_families

from hybridchat import vllm_metrics
from hybridchat.auto import AUTO, AutoRoute, offers_fallback
from hybridchat.backends import GenerationParams, RetryPolicy, VllmBackend, VllmClient
from hybridchat.backends.gemini import GeminiBackend
from hybridchat.chat import ChatService, Conversation
from hybridchat.store import SessionSummary, open_store
from hybridchat.transcript import markdown

PARAMS = GenerationParams(max_tokens=8, temperature=0.1)
QUICK = RetryPolicy(attempts=2, backoff=0.01)


def service_for(gemma_url: str, gemini_url: str, tmp_path, **auto) -> ChatService:
    gemma = VllmBackend(VllmClient(gemma_url, retry=QUICK, connect_timeout=1), label="Gemma")
    gemini = GeminiBackend(api_key_client(gemini_url), label="Gemini")
    return ChatService({"gemma": gemma, "gemini": gemini}, open_store(f"sqlite:///{tmp_path}/h.db"),
                       auto=AutoRoute(gemma, gemini, **auto))


def turn(service: ChatService, chat: Conversation, message: str = "Hi"):
    progress = list(service.respond(chat, message, AUTO, PARAMS))
    assert progress[-1].turn is not None
    return progress[-1]


def test_a_well_gemma_answers_and_the_turn_says_it_was_auto(fault_server, stand_in, tmp_path):
    service = service_for(fault_server.url, stand_in, tmp_path)
    chat = Conversation("visitor:alice")
    last = turn(service, chat)
    assert (last.turn.model, last.turn.reply, last.turn.auto, last.turn.auto_reason) == ("gemma", REPLY, True, None)
    assert last.label == "Gemma (google/gemma-3-12b-it)"


@pytest.mark.parametrize("down", ["refused connection", "health 503", "generation 503"])
def test_gemma_down_or_refusing_gemini_answers_with_the_reason_and_only_its_turn_is_saved(
        down, fault_server, stand_in, closed_port_url, tmp_path):
    gemma_url = closed_port_url if down == "refused connection" else fault_server.url
    fault_server.mode, fault_server.failures = ("loading", 0) if down == "health 503" else ("flaky", 100)
    service = service_for(gemma_url, stand_in, tmp_path)
    chat = Conversation("visitor:alice")
    last = turn(service, chat)
    reason = {"refused connection": "Gemma is not reachable", "health 503": "Gemma is not reachable",
              "generation 503": "Gemma refused (HTTP 503)"}[down]
    assert (last.turn.model, last.turn.auto_reason) == ("gemini", reason) and last.turn.status in ("ok", "cut_off")
    assert last.turn.reply and last.label.endswith(f" · {reason}")
    saved = service.store.load(chat.session_id)
    assert [(t.model, t.auto_reason) for t in saved] == [("gemini", reason)], "the failed attempt is not saved"
    asked = fault_server.posts()
    turn(service, chat, "And again?")  # within recheck_seconds: Gemma is not asked again
    assert fault_server.posts() == asked


def test_a_full_queue_sends_turns_to_gemini_and_gemma_answers_again_once_it_drains(fault_server, stand_in, tmp_path):
    fault_server.waiting = 12
    service = service_for(fault_server.url, stand_in, tmp_path, max_waiting=8, recheck_seconds=0.5)
    chat = Conversation("visitor:alice")
    first = turn(service, chat)
    assert (first.turn.model, first.turn.auto_reason) == ("gemini", "Gemma's queue is full (12 waiting)")
    assert fault_server.posts() == 0
    fault_server.waiting = 3
    assert turn(service, chat, "Still there?").turn.model == "gemini", "the finding holds for recheck_seconds"
    time.sleep(0.6)
    back = turn(service, chat, "And now?")
    assert (back.turn.model, back.turn.auto_reason, back.turn.reply) == ("gemma", None, REPLY)
    # Gemma sees the whole chat, Gemini's replies included.
    sent = fault_server.bodies[-1]["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == ["Hi", "Still there?", "And now?"]


def test_a_chat_that_no_longer_fits_gemmas_context_goes_on_with_gemini(stand_in, fault_server, tmp_path):
    service = service_for(stand_in, fault_server.url, tmp_path)  # Gemma: the tiny model's 512 tokens
    chat = Conversation("visitor:alice")
    first = turn(service, chat, "Tell me about rivers.")
    assert first.turn.model == "gemma"
    long = "Please keep this text in mind. " + "The river runs past the old mill and the bridge. " * 40
    second = turn(service, chat, long)
    assert (second.turn.model, second.turn.auto_reason) == ("gemini", "the chat no longer fits Gemma's context")
    # That was about this chat, not Gemma: another chat still goes to Gemma.
    assert turn(service, Conversation("visitor:bob")).turn.model == "gemma"


def test_a_reply_broken_off_is_kept_and_gemini_is_asked_only_when_the_visitor_says(fault_server, stand_in, tmp_path):
    fault_server.mode = "truncated"
    service = service_for(fault_server.url, stand_in, tmp_path)
    chat = Conversation("visitor:alice")
    broken = turn(service, chat).turn
    assert (broken.model, broken.status, broken.auto) == ("gemma", "interrupted", True) and broken.reply
    assert broken.error and offers_fallback(service.auto, chat)
    assert len(service.store.load(chat.session_id)) == 1, "not asked again on its own"
    asked = list(service.auto.ask_fallback(service, chat, PARAMS))[-1].turn
    assert (asked.model, asked.replaces, asked.auto_reason) == ("gemini", broken.turn_id, "Gemma's reply was broken off")
    assert [t.turn_id for t in service.store.load(chat.session_id)] == [broken.turn_id, asked.turn_id]
    assert not offers_fallback(service.auto, chat)
    summary = SessionSummary(session_id=chat.session_id, user_id="visitor:alice", title="Hi", created_at=None,
                             updated_at=None, turn_count=2)
    written = markdown(summary, service.store.load(chat.session_id))
    assert "**gemini** _(Auto, because Gemma's reply was broken off)_:" in written


def test_a_reply_the_visitor_stopped_offers_no_fallback(stand_in, tmp_path):
    service = service_for(stand_in, stand_in, tmp_path)
    chat = Conversation("visitor:alice")
    progress = service.respond(chat, "Write a long story.", AUTO, GenerationParams(max_tokens=200))
    next(p for p in progress if p.reply)
    progress.close()  # Stop
    [stopped] = service.store.load(chat.session_id)
    assert (stopped.model, stopped.status, stopped.error, stopped.auto) == ("gemma", "interrupted", None, True)
    assert not offers_fallback(service.auto, chat)


def test_the_stand_in_counts_its_replies_in_vllms_gauges(stand_in):
    """Four replies asked at once: one written at a time, the others waiting; none once all are sent."""
    body = {"messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 150}
    seen: list[vllm_metrics.Load] = []
    with httpx.Client(timeout=120) as http, ThreadPoolExecutor(4) as pool:
        asked = [pool.submit(http.post, f"{stand_in}/v1/chat/completions", json=body) for _ in range(4)]
        while not all(reply.done() for reply in asked):
            seen.append(vllm_metrics.read(stand_in))
            time.sleep(0.02)
        assert all(reply.result().status_code == 200 for reply in asked)
    assert max(load.running for load in seen) == 1 and max(load.waiting for load in seen) >= 2, seen
    assert (vllm_metrics.read(stand_in).running, vllm_metrics.read(stand_in).waiting) == (0, 0)
    families = {f.name: f.type for f in text_string_to_metric_families(httpx.get(f"{stand_in}/metrics").text)}
    assert families["vllm:num_requests_waiting"] == "gauge" and families["vllm:prefix_cache_hits"] == "counter"
