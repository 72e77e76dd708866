"""Gemini through the real google-genai SDK: API-key and Vertex URL forms, and every error path."""

from __future__ import annotations

import pytest
from conftest import api_key_client, vertex_client
from fault_server import REPLY

from hybridchat.backends import GenerationParams, RetryPolicy, build_backends, call_gemini_model
from hybridchat.backends.gemini import GeminiBackend
from hybridchat.config import Settings
from hybridchat.errors import (
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    BadResponse,
    ContentBlocked,
    EmptyResponse,
    NeedsCredentials,
    QuotaExceeded,
)
from hybridchat.history import conversation, process_message_gemini, process_message_openai
from hybridchat.serve_local import STAND_IN_PREFIX

GREEDY = GenerationParams(temperature=0, max_tokens=12)
NO_RETRY = RetryPolicy(attempts=1)
QUICK_RETRY = RetryPolicy(backoff=0.01)  # production's attempts and statuses, shorter waits


@pytest.mark.parametrize("make_client", [api_key_client, vertex_client], ids=["api-key", "vertex"])
def test_streams_the_models_reply_in_both_url_forms(stand_in, tiny_model, make_client):
    backend = GeminiBackend(make_client(stand_in), label="Gemini")
    history = [["Hi", "Hello!"]]
    params = GREEDY.model_copy(update={"system_prompt": "Be brief."})
    pieces = list(backend.stream(conversation("What is the capital of France?", history), params))
    expected = "".join(
        tiny_model.stream(process_message_openai("What is the capital of France?", history, "Be brief."), GREEDY)
    )
    assert len(pieces) > 1
    assert "".join(pieces) == expected
    reply = backend.stream(conversation("What is the capital of France?", history), params)
    assert "".join(reply) == expected and reply.usage.prompt_tokens > 10 and reply.usage.completion_tokens > 0
    health = backend.health()
    assert health.ok and STAND_IN_PREFIX in health.detail


def test_stand_in_names_itself_in_the_model_version(stand_in):
    client = api_key_client(stand_in)  # held: a collected client closes its connection
    response = client.models.generate_content(model="gemini-2.5-flash", contents="Hi")
    assert response.model_version.startswith(STAND_IN_PREFIX)
    assert "gemini-2.5-flash" in response.model_version


def test_call_gemini_model_with_a_client_and_from_settings(stand_in, tiny_model, monkeypatch):
    contents = process_message_gemini("Tell me more", [["Hi", "Hello!"]])
    expected = "".join(tiny_model.stream(process_message_openai("Tell me more", [["Hi", "Hello!"]]), GREEDY))
    assert call_gemini_model(contents, 0.0, 1.0, 12, client=vertex_client(stand_in)) == expected
    monkeypatch.setenv("HYBRIDCHAT_GEMINI_URL", stand_in)
    assert call_gemini_model(contents, 0.0, 1.0, 12) == expected


def test_registry_in_local_mode_reaches_the_stand_in(stand_in, monkeypatch):
    monkeypatch.setenv("HYBRIDCHAT_GEMINI_URL", stand_in)
    monkeypatch.setenv("HYBRIDCHAT_VLLM_URL", stand_in)
    backends = build_backends(Settings())
    assert [b.label for b in backends.values()] == ["Gemma", "Gemini 2.5 Flash (local stand-in)"]
    for backend in backends.values():
        assert backend.complete("Hi", [], GREEDY)
    # Gemma's label names what its server really serves, once asked.
    assert backends["gemma"].label.startswith(f"Gemma ({STAND_IN_PREFIX}")


def test_vertex_mode_without_credentials_is_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    backend = build_backends(Settings(mode="gcp", backends=["gemini"]))["gemini"]
    assert backend.label == "Gemini 2.5 Flash (Vertex AI)"
    with pytest.raises(NeedsCredentials, match="application-default login"):
        backend.complete("Hi", [])
    assert not backend.health().ok


# --- faults -------------------------------------------------------------------------------


def faulty(fault_server, retry: RetryPolicy = NO_RETRY, **options) -> GeminiBackend:
    return GeminiBackend(vertex_client(fault_server.url, **options), label="Gemini", retry=retry)


def test_quota_is_retried_then_explained(fault_server):
    fault_server.mode = "quota"
    with pytest.raises(QuotaExceeded, match="quota or rate limit"):
        faulty(fault_server, QUICK_RETRY).complete("Hi", [])
    assert fault_server.posts() == 3


def test_server_error_is_retried_then_explained(fault_server):
    fault_server.mode = "server_error"
    with pytest.raises(BadResponse, match=r"Gemini failed with a server error \(HTTP 500\)"):
        faulty(fault_server, QUICK_RETRY).complete("Hi", [])
    assert fault_server.posts() == 3


def test_a_503_then_success_is_transparent(fault_server):
    fault_server.mode, fault_server.failures = "flaky", 2
    assert faulty(fault_server, QUICK_RETRY).complete("Hi", []) == REPLY
    assert fault_server.posts() == 3


def test_a_safety_block_is_not_retried(fault_server):
    fault_server.mode = "safety_prompt"
    with pytest.raises(ContentBlocked):
        faulty(fault_server, QUICK_RETRY).complete("Hi", [])
    assert fault_server.posts() == 1


def test_the_retry_statuses_setting_is_what_gemini_follows(fault_server):
    fault_server.mode = "quota"
    backend = GeminiBackend(
        settings=Settings(gemini_url=fault_server.url, google_api_key="k", retry_backoff=0.01, retry_statuses=[503])
    )
    with pytest.raises(QuotaExceeded):
        backend.complete("Hi", [])
    assert fault_server.posts() == 1


def test_unavailable_is_explained(fault_server):
    fault_server.mode = "loading"
    with pytest.raises(BackendUnavailable, match="overloaded"):
        faulty(fault_server).complete("Hi", [])


def test_bad_request_shows_googles_reason(fault_server):
    fault_server.mode = "bad_request"
    with pytest.raises(BackendRejected, match="max_tokens is too large"):
        faulty(fault_server).complete("Hi", [])


@pytest.mark.parametrize(
    "mode, error, message",
    [
        ("safety_prompt", ContentBlocked, "blocked this message for safety \\(SAFETY\\)"),
        ("safety_reply", ContentBlocked, "withheld its reply \\(SAFETY\\)"),
        ("empty", EmptyResponse, "empty reply"),
        ("max_tokens", EmptyResponse, "whole max-tokens budget"),
        ("malformed", BadResponse, "cannot read"),
    ],
)
def test_answers_without_text_are_explained(fault_server, mode, error, message):
    fault_server.mode = mode
    backend = faulty(fault_server)
    with pytest.raises(error, match=message):
        backend.complete("Hi", [])
    with pytest.raises(error, match=message):
        call_gemini_model(process_message_gemini("Hi", []), client=backend)


def test_slow_answer_times_out(fault_server):
    fault_server.mode, fault_server.delay = "slow", 1.5
    with pytest.raises(BackendTimeout, match="did not answer in time"):
        faulty(fault_server, timeout=300).complete("Hi", [])


def test_connection_refused_is_explained(closed_port_url):
    backend = GeminiBackend(api_key_client(closed_port_url), label="Gemini", retry=NO_RETRY)
    with pytest.raises(BackendUnavailable, match="Gemini is not reachable"):
        backend.complete("Hi", [])
    assert not backend.health().ok
