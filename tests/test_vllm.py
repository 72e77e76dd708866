"""Gemma on vLLM: both wire protocols against the stand-in server, every error path against faults."""

from __future__ import annotations

import logging
import re

import pytest
from fault_server import REPLY

from hybridchat.backends import GenerationParams, RetryPolicy, VllmBackend, VllmClient, call_gemma_model
from hybridchat.config import Settings
from hybridchat.errors import (
    BackendError,
    BackendLoading,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    BadResponse,
    ModelNotFound,
    QuotaExceeded,
)
from hybridchat.history import conversation, gemma_output, process_message_gemma, process_message_openai
from hybridchat.protocols.legacy import echoed
from hybridchat.serve_local import STAND_IN_PREFIX

GREEDY = GenerationParams(temperature=0, max_tokens=12)


def client(url: str, attempts: int = 3, **options) -> VllmClient:
    return VllmClient(url, retry=RetryPolicy(attempts, backoff=0.01), connect_timeout=1, **options)


def test_chat_streams_the_models_own_reply_over_http(stand_in, tiny_model):
    backend = VllmBackend(client(stand_in), label="Gemma")
    history = [["Hi", "Hello!"]]
    pieces = list(backend.stream(conversation("What is the capital of France?", history), GREEDY))
    direct = "".join(tiny_model.stream(process_message_openai("What is the capital of France?", history), GREEDY))
    assert len(pieces) > 1, "the reply should arrive in several pieces"
    assert "".join(pieces) == direct
    reply = backend.stream(conversation("What is the capital of France?", history), GREEDY)
    assert reply.usage is None and "".join(reply) == direct
    assert reply.usage.prompt_tokens > 10 and reply.usage.completion_tokens > 0
    assert backend.complete("What is the capital of France?", history, GREEDY) == direct


def test_served_model_is_discovered_and_names_the_stand_in(stand_in):
    vllm = client(stand_in)
    assert vllm.served_model().startswith(STAND_IN_PREFIX)
    health = vllm.health()
    assert health.ok and STAND_IN_PREFIX in health.detail


@pytest.mark.parametrize("api", ["openai", "legacy"])
@pytest.mark.parametrize("template", ["gemma", "codelab"])
def test_call_gemma_model_returns_only_the_new_reply(stand_in, legacy_stand_in, tiny_model, api, template):
    history = [["Hi", "Hello!"]]
    prompt = process_message_gemma("Tell me more", history, template=template)
    server = legacy_stand_in if api == "legacy" else stand_in
    reply = call_gemma_model(prompt, 0.0, 1.0, 12, client=client(server, api=api))
    # The stand-in re-renders the parsed prompt with its own chat template.
    messages = process_message_openai("Tell me more", history)
    stop = ["<end_of_turn>"] if template == "gemma" else ["User's Turn:"]
    expected = "".join(tiny_model.stream(messages, GREEDY.model_copy(update={"stop": tuple(stop)})))
    assert reply == expected.strip()
    assert "Prompt:" not in reply and "Turn:" not in reply


def test_call_gemma_model_reads_settings(legacy_stand_in, monkeypatch):
    monkeypatch.setenv("HYBRIDCHAT_VLLM_URL", legacy_stand_in)
    monkeypatch.setenv("HYBRIDCHAT_VLLM_API", "legacy")
    assert call_gemma_model(process_message_gemma("Hi", []), 0.0, 1.0, 8)


def test_legacy_backend_renders_the_configured_template(fault_server):
    backend = VllmBackend(client(fault_server.url, api="legacy"), label="Gemma", template="codelab")
    assert backend.complete("Hi", []) == "fault server says hi"


@pytest.mark.parametrize(
    "raw, prompt, expected",
    [
        ("Prompt:\nP\nOutput:\n Paris.", "P", "Paris."),
        ("P Paris.", "P", "Paris."),
        ("Output: Paris.", "", "Paris."),
        ("Paris.\nUser's Turn:\n>>> and?", "", "Paris."),
        ("Paris.\nuser's turn: and?", "", "Paris."),
        ("User's Turn:\n>>> Hi\nAssistant's Turn:\n>>> Paris.", "", "Paris."),
        ("<start_of_turn>model\nParis.<end_of_turn>\n<start_of_turn>user\nmore", "", "Paris."),
        # Gemma 4's: its turn's end, and a thought channel, which is never the answer.
        ("<|turn>model\nParis.<turn|>\n<|turn>user\nmore", "", "Paris."),
        ("<|channel>thought\nThe capital is asked.<channel|>Paris.<turn|>", "", "Paris."),
        ("P<|channel>thought\nStill thinking", "P", ""),
        # With the echo found, a marker inside the reply is the model's text, not the prompt's.
        (echoed("Assistant's Turn:\n>>> \n", "A\nAssistant's Turn:\n>>> B"),
         "Assistant's Turn:\n>>> \n", "A\nAssistant's Turn:\n>>> B"),
    ],
)
def test_the_reply_of_a_raw_completion_follows_the_codelab_rules(raw, prompt, expected):
    assert gemma_output(raw, prompt)[1] == expected


# --- faults -------------------------------------------------------------------------------


def test_connection_refused_is_retried_then_explained(closed_port_url):
    backend = VllmBackend(client(closed_port_url, model="m", attempts=2), label="Gemma")
    with pytest.raises(BackendUnavailable, match=r"Gemma is not reachable at http://127\.0\.0\.1:.*Is the server running"):
        backend.complete("Hi", [])
    assert not backend.health().ok


def test_loading_model_says_gemma_is_starting(fault_server):
    fault_server.mode = "loading"
    backend = VllmBackend(client(fault_server.url, model="m", attempts=3), label="Gemma")
    with pytest.raises(BackendLoading, match=r"Gemma is starting.*try Gemini or wait"):
        backend.complete("Hi", [])
    assert fault_server.posts() == 3, "503 is retried"
    health = backend.health()
    assert not health.ok and "Gemma is starting" in health.detail


def test_503_while_loading_then_success_is_transparent(fault_server):
    fault_server.mode, fault_server.failures = "flaky", 2
    backend = VllmBackend(client(fault_server.url, model="m", attempts=3), label="Gemma")
    assert backend.complete("Hi", []) == "fault server says hi"
    assert fault_server.posts() == 3


@pytest.mark.parametrize(("mode", "error", "told"), [
    ("server_error", BadResponse, r"Gemma failed with a server error \(HTTP 500\)"),
    ("quota", QuotaExceeded, r"Gemma is over its quota or rate limit \(HTTP 429\)"),
])
def test_transient_statuses_are_retried_as_for_every_backend(fault_server, mode, error, told):
    fault_server.mode = mode
    backend = VllmBackend(client(fault_server.url, model="m"), label="Gemma")
    with pytest.raises(error, match=told):
        backend.complete("Hi", [])
    assert fault_server.posts() == 3


def test_the_retry_statuses_setting_is_what_gemma_follows(fault_server):
    fault_server.mode = "server_error"
    settings = Settings(vllm_url=fault_server.url, gemma_model="m", retry_backoff=0.01, retry_statuses=[503])
    with pytest.raises(BadResponse):
        VllmBackend(VllmClient.from_settings(settings)).complete("Hi", [])
    assert fault_server.posts() == 1


def test_what_other_openai_compatible_servers_send_is_read(fault_server):
    """No id, created or model in the chunks (a missing 'created' once made Gemma "unavailable")."""
    fault_server.mode = "lean"
    reply = VllmBackend(client(fault_server.url, model="m")).stream(conversation("Hi"), GenerationParams())
    assert list(reply) == [REPLY] and reply.finish_reason == "stop"


def test_a_client_error_keeps_the_servers_reason_for_the_log_and_is_not_retried(fault_server, caplog):
    fault_server.mode = "bad_request"
    backend = VllmBackend(client(fault_server.url, model="m"), label="Gemma")
    with caplog.at_level(logging.WARNING, logger="hybridchat.backends.vllm_errors"):
        with pytest.raises(BackendRejected) as refused:
            backend.complete("Hi", [])
    assert str(refused.value) == "Gemma refused the request (HTTP 400)"
    assert "HTTP 400: max_tokens is too large for this model" in caplog.text
    assert fault_server.posts() == 1


def test_slow_answer_times_out_with_a_message(fault_server):
    fault_server.mode, fault_server.delay = "slow", 1.5
    backend = VllmBackend(client(fault_server.url, model="m", timeout=0.3), label="Gemma")
    with pytest.raises(BackendTimeout, match=r"Gemma did not answer within 0.3 s"):
        backend.complete("Hi", [])
    assert fault_server.posts() == 1, "a timeout is not retried"


def test_malformed_stream_is_reported(fault_server):
    fault_server.mode = "malformed"
    backend = VllmBackend(client(fault_server.url, model="m"), label="Gemma")
    with pytest.raises(BadResponse, match="not valid JSON"):
        backend.complete("Hi", [])


def test_malformed_completion_and_legacy_answers_are_reported(fault_server):
    fault_server.mode = "malformed"
    with pytest.raises(BadResponse, match="not valid JSON"):
        call_gemma_model("Hi", client=client(fault_server.url, model="m"))
    with pytest.raises(BadResponse, match="cannot read \\(bad 'predictions'\\)"):
        call_gemma_model("Hi", client=client(fault_server.url, api="legacy"))


def test_truncated_stream_keeps_the_partial_reply_then_reports(fault_server):
    fault_server.mode = "truncated"
    backend = VllmBackend(client(fault_server.url, model="m"), label="Gemma")
    received = []
    with pytest.raises(BadResponse, match="cut off"):
        for piece in backend.stream(conversation("Hi"), GenerationParams()):
            received.append(piece)
    assert received == ["fault server says hi"]


@pytest.mark.parametrize(
    "mode, told",
    [
        ("engine_dead", "Gemma's server failed mid-reply; it may be restarting."),
        ("abort", "Gemma's server stopped this reply (it is shutting down or restarting)."),
    ],
)
def test_a_server_stopping_mid_reply_is_told_in_our_words(fault_server, caplog, mode, told):
    fault_server.mode = mode
    backend = VllmBackend(client(fault_server.url, model="m"), label="Gemma")
    received = []
    with caplog.at_level(logging.WARNING, logger="hybridchat.backends.vllm_errors"):
        with pytest.raises(BackendError) as stopped:
            for piece in backend.stream(conversation("Hi"), GenerationParams()):
                received.append(piece)
    assert received == [REPLY] and str(stopped.value).startswith(told)
    assert "EngineCore" not in str(stopped.value)
    if mode == "engine_dead":
        assert "EngineCore encountered an issue" in caplog.text, "the server's own text goes to the log"


def test_a_model_name_the_server_no_longer_serves_is_found_again(stand_in, tiny_model_dir):
    """vLLM restarted under another --served-model-name: the 404 re-discovers the name once."""
    vllm = client(stand_in)
    vllm._model = "google/gemma-3-12b-it"  # what it served before the restart
    assert VllmBackend(vllm).complete("Hi", [], GREEDY)
    assert vllm.known_model == f"{STAND_IN_PREFIX}{tiny_model_dir.name}"


def test_a_configured_model_name_the_server_does_not_serve_is_explained(stand_in, tiny_model_dir):
    backend = VllmBackend(client(stand_in, model="google/gemma-3-12b-it"))
    served = f"{STAND_IN_PREFIX}{tiny_model_dir.name}"
    message = f"does not serve 'google/gemma-3-12b-it' (HYBRIDCHAT_GEMMA_MODEL); it serves '{served}'"
    with pytest.raises(ModelNotFound, match=re.escape(message)):
        backend.complete("Hi", [], GREEDY)
    health = backend.health()
    assert not health.ok and message in health.detail


def test_legacy_health_asks_generate_itself(stand_in, legacy_stand_in, fault_server):
    assert VllmClient(legacy_stand_in, api="legacy").health().ok
    vllms_own = VllmClient(stand_in, api="legacy").health()  # serve-local without --legacy: as vLLM's image
    assert not vllms_own.ok and "/generate (HTTP 404)" in vllms_own.detail, vllms_own.detail
    fault_server.mode = "server_error"
    health = VllmClient(fault_server.url, api="legacy").health()
    assert not health.ok and "server error (HTTP 500)" in health.detail
    assert fault_server.requests == ["POST /generate"], "the protocol is probed, not /health"
