"""Gemma scenarios against the real vLLM engine and against our stand-in, the same tests for both.

The real engine is vLLM 0.32's CPU build started with the container arguments of
`deploy/gemma3-12b-deploy.yaml` (what differs here is listed in `model_servers.SUBSTITUTIONS`), so
these tests also prove the manifest's flags parse on a real vLLM. The app is driven through its
`/chat` endpoint as a browser does; the store is read back afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from conftest import running_app
from prometheus_client.parser import text_string_to_metric_families
from test_room_gemma import KEY, VLLMS_ANSWERS, key_answers

from bench import prefix_cache
from bench.model_servers import CONTEXT, ModelServer
from bench.queue_client import QueueClient, Reply, text_of
from hybridchat import vllm_metrics
from hybridchat.backends import GenerationParams, VllmBackend, VllmClient, build_backends
from hybridchat.chat import ChatService, Conversation
from hybridchat.chat_view import figures
from hybridchat.config import Settings
from hybridchat.costs import GPU_PRICES
from hybridchat.history import conversation
from hybridchat.lab.reach import Reached
from hybridchat.rehearse import rehearse
from hybridchat.room_service import Room
from hybridchat.store import open_store
from hybridchat.store.progress import open_progress

pytestmark = pytest.mark.slow  # the real vLLM engine

ROOT = Path(__file__).resolve().parents[1]
LONG = "Please summarise this text. " + "The quick brown fox jumps over the lazy dog near the river bank. " * 30
NOTICE = "earlier turns were not sent to Gemma"
CUT_OFF = "*(stopped at the max-tokens limit)*"


@pytest.fixture(scope="module", params=["stand-in", "vllm"])
def gemma(request, tmp_path_factory) -> ModelServer:
    server = ModelServer(request.param, tmp_path_factory.mktemp(request.param))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def app(gemma, tmp_path_factory):
    """The app as configured from settings, with Gemma at ``gemma`` (its model name discovered)."""
    folder = tmp_path_factory.mktemp("engine-app")
    with running_app(folder, vllm_url=gemma.url, backends=["gemma"], stream_interval=0, retry_backoff=0.01) as app:
        yield app


def chat(url: str, message: str, browser: dict[str, Any], max_tokens: int = 24, on_update=None) -> Reply:
    """One turn through the app's /chat endpoint at the slider's lowest temperature (0.1): nearly greedy."""

    async def turn() -> Reply:
        async with httpx.AsyncClient(timeout=300) as http:
            client = QueueClient(url, http)
            return await client.turn(message, browser, max_tokens=max_tokens, temperature=0.1, on_update=on_update)

    return asyncio.run(turn())


def visitor() -> dict[str, Any]:
    return {"visitor": uuid.uuid4().hex, "session": None}


def saved(store_url: str, session: str):
    store = open_store(store_url, resilient=False)
    try:
        return store.load(session)
    finally:
        store.close()


def exported_metrics(text: str) -> set[tuple[str, str, tuple[str, ...]]]:
    """Each sample's name, its family's type and its label names, in a server's /metrics."""
    return {(sample.name, family.type, tuple(sorted(sample.labels)))
            for family in text_string_to_metric_families(text) for sample in family.samples}


def doctor(gemma: ModelServer, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "HYBRIDCHAT_VLLM_URL": gemma.url,
        "HYBRIDCHAT_BACKENDS": "gemma",
        "HYBRIDCHAT_STORE_URL": f"sqlite:///{tmp_path}/doctor.db",
        "COLUMNS": "300",  # one table row per line
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "hybridchat.cli", "doctor"], env=environment, capture_output=True, text=True, timeout=120
    )


def test_a_three_turn_chat_streams_carries_its_context_logs_usage_and_saves_every_turn(app, caplog):
    url, store_url = app
    browser, updates = visitor(), []
    messages = ["My name is Ada.", "What is my name?", "Thank you!"]
    with caplog.at_level(logging.INFO, logger="hybridchat.turns"):
        for message in messages:
            reply = chat(url, message, browser, on_update=updates.append)
            assert reply.ok and not reply.warnings, reply.warnings
            browser = reply.browser
    assert len(updates) > 3, "the replies streamed"
    turns = saved(store_url, browser["session"])
    assert [t.user for t in turns] == messages
    assert all(t.status in ("ok", "cut_off") and t.reply for t in turns)
    # The server's own counts: each prompt held the whole conversation before it.
    for before, after in itertools.pairwise(turns):
        assert after.prompt_tokens > before.prompt_tokens + before.completion_tokens
    logged = [json.loads(r.getMessage()) for r in caplog.records if r.name == "hybridchat.turns"]
    assert [(line["prompt_tokens"], line["completion_tokens"]) for line in logged] == [
        (t.prompt_tokens, t.completion_tokens) for t in turns
    ]
    # Priced from those counts: Gemma by its two L4s' hours for the time each reply took, shown under it.
    for t in turns:
        assert not t.tokens_estimated
        assert t.cost_usd == pytest.approx(2 * GPU_PRICES["nvidia-l4"] * t.latency_ms / 1000 / 3600)
        assert f"{t.prompt_tokens:,} → {t.completion_tokens:,} tokens · $" in figures(t) and "est." in figures(t)


def test_a_chat_longer_than_the_context_goes_on_says_so_and_keeps_every_turn(app):
    url, store_url = app
    browser = visitor()
    for _ in range(8):
        reply = chat(url, LONG, browser, max_tokens=16)
        assert reply.ok and not reply.warnings, reply.warnings
        browser = reply.browser
    short = chat(url, "Hi", browser, max_tokens=16)
    assert short.ok and not short.warnings, short.warnings
    turns = saved(store_url, short.browser["session"])
    assert len(turns) == 9 and all(t.status in ("ok", "cut_off") and t.reply for t in turns), [t.error for t in turns]
    noticed = [i for i, t in enumerate(turns) if t.notice]
    assert noticed and turns[-1].context_start > 0
    # In the chat, once per block left out: on those turns' replies only.
    shown = [text_of(m) for m in short.messages[1::2]]
    assert [i for i, text in enumerate(shown) if NOTICE in text] == noticed


def test_a_message_longer_than_the_context_is_refused_and_stays_in_the_box(app):
    url, _ = app
    huge = "word " * 6000  # 30 kB: under the app's size limit, over a 2,048-token context
    reply = chat(url, huge, visitor())
    assert reply.ok and reply.outputs[1] == huge, "the message stays in the box"
    assert len(reply.warnings) == 1 and reply.warnings[0].startswith("That message is ")
    assert f"its context is {CONTEXT:,} tokens" in reply.warnings[0]


def test_max_tokens_above_the_context_is_cut_to_the_room_left(app):
    url, store_url = app
    reply = chat(url, "Say hello.", visitor(), max_tokens=4096)  # the slider's maximum
    assert reply.ok and not reply.warnings, reply.warnings
    turn = saved(store_url, reply.browser["session"])[-1]
    assert turn.status in ("ok", "cut_off") and turn.reply
    assert turn.params["max_tokens"] == CONTEXT - turn.prompt_tokens


def test_a_reply_stopped_at_max_tokens_is_saved_and_shown_as_cut_off(app):
    url, store_url = app
    reply = chat(url, "Tell me a long story about a dragon.", visitor(), max_tokens=5)
    turn = saved(store_url, reply.browser["session"])[-1]
    assert turn.status == "cut_off" and turn.completion_tokens == 5
    assert reply.last_reply == f"{turn.reply}\n\n{CUT_OFF}"


def test_one_blocking_call_answers_as_the_stream_does(gemma):
    """HYBRIDCHAT_STREAM=false asks the engine once for the whole reply: the same greedy reply,
    token counts and finish reason as the stream's."""
    backend = VllmBackend(VllmClient(gemma.url))
    params = GenerationParams(temperature=0, max_tokens=8)
    streamed = backend.stream(conversation("Name a colour.", []), params)
    text = "".join(streamed)
    whole = backend.answer(conversation("Name a colour.", []), params)
    assert list(whole) == [text] and text
    assert (whole.usage, whole.finish_reason) == (streamed.usage, streamed.finish_reason)
    assert whole.usage is not None and whole.finish_reason in ("stop", "length")


def test_doctor_checks_the_model_name_against_what_the_server_serves(gemma, tmp_path):
    right = doctor(gemma, tmp_path, HYBRIDCHAT_GEMMA_MODEL=gemma.served_name)
    assert right.returncode == 0, right.stdout
    assert f"Gemma ({gemma.served_name})" in right.stdout and f"context {CONTEXT:,} tokens" in right.stdout
    wrong = doctor(gemma, tmp_path, HYBRIDCHAT_GEMMA_MODEL="google/gemma-3-27b-it")
    assert wrong.returncode == 1
    assert f"does not serve 'google/gemma-3-27b-it' (HYBRIDCHAT_GEMMA_MODEL); it serves '{gemma.served_name}'" in wrong.stdout


def test_legacy_mode_doctor_probes_generate(gemma, tmp_path):
    """vLLM itself has no /generate (only the Model Garden container has); nor has the stand-in,
    unless started as that container (serve-local --legacy)."""
    legacy = doctor(gemma, tmp_path, HYBRIDCHAT_VLLM_API="legacy")
    assert legacy.returncode == 1 and "has no /generate (HTTP 404)" in legacy.stdout, legacy.stdout


def test_notebook_04s_package_cell_answers_through_the_served_model(gemma, stand_in):
    notebook = nbformat.read(ROOT / "notebooks" / "04_model_callers.ipynb", as_version=4)
    cell = next(c.source for c in notebook.cells if "build_backends(settings)" in c.source)
    settings = Settings(vllm_url=gemma.url, gemini_url=stand_in, backends=["gemma", "gemini"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(cell, {"settings": settings, "MODE": "local", "reached": Reached(settings)})  # as cell 3 leaves them
    label, _, reply = printed.getvalue().splitlines()[0].partition(": ")
    assert label == f"Gemma ({gemma.served_name})", "named as the server serves it"
    assert len(reply) > 2, "a non-empty reply, as its repr"


CHATML_TRANSLATOR = '''
def process_message_gemma(message, history):
    """A learner's translator for the model the tests serve, SmolLM2: its ChatML template."""
    turns = [*history, {"role": "user", "content": message}]
    prompt = "".join(f"<|im_start|>{turn['role']}\\n{turn['content']}<|im_end|>\\n" for turn in turns)
    return prompt + "<|im_start|>assistant\\n"


def process_message_gemini(message, history):
    raise NotImplementedError()
'''


def test_a_learners_raw_prompt_is_answered_by_the_engine_through_the_app(gemma, tmp_path):
    """The learner's path (``hybridchat.learner``): their translator's raw prompt, sent by their
    ``requests`` caller to ``/v1/completions`` with the served name ``endpoints`` discovered."""
    from test_learner import package

    code = package(tmp_path / "my_app")
    (code / "translators.py").write_text(CHATML_TRANSLATOR)
    settings = Settings(vllm_url=gemma.url, backends=["gemma"], learner_code=str(code),
                        store_url=f"sqlite:///{tmp_path}/history.db")
    service = ChatService(build_backends(settings), open_store(settings.resolved_store_url))
    *_, done = service.respond(Conversation("visitor:learner"), "What is the capital of France?", "my_gemma",
                               GenerationParams(temperature=0.1, max_tokens=16))
    assert done.turn.status in ("ok", "cut_off") and done.turn.reply.strip(), done.turn.error
    assert done.turn.model_label == "Gemma · your code"


# 30 turns on the real engine. Earlier machines ran them within the default 300 s; an AMD EPYC
# with AVX2 only took 560 s (2026-12-02): vLLM falls back from oneDNN there, and on the one
# core it uses a full 2,048-token prompt without cache hits took ~70 s to first token.
@pytest.mark.timeout(900)
def test_the_prefix_cache_benchmark_runs_on_the_real_engine(gemma):
    """bench.prefix_cache at a small size, so it cannot rot (its numbers are not asserted here)."""
    if gemma.kind != "vllm":
        pytest.skip("the prefix cache and its /metrics are the real engine's")
    results = prefix_cache.run(gemma.url, turns=15)
    assert set(results["per_turn"]) == set(prefix_cache.POLICIES)
    assert all(len(rows) == 15 for rows in results["per_turn"].values())
    assert results["summary"]["from_turn"] < 15, "the chat outgrew the context"
    assert [measure for measure, _ in prefix_cache.report(results)][-1] == "prefix cache, time to first token"


def test_a_server_restarted_mid_reply_under_another_name_then_the_next_turn_works(app, gemma):
    """Stopped mid-reply, the visitor keeps what came, told in our words; while it is down, the
    chat says so; back under another name, the app finds it (the tests read the name afresh)."""
    url, store_url = app
    first = chat(url, "Hello!", visitor(), max_tokens=8)
    browser = first.browser
    stopping = threading.Event()

    def stop_at_the_first_piece(outputs: list[Any]) -> None:
        if not stopping.is_set() and text_of(outputs[0][-1]).strip():
            stopping.set()
            threading.Thread(target=gemma.stop).start()

    broken = chat(url, "Write a long story about a dragon.", browser, max_tokens=600, on_update=stop_at_the_first_piece)
    assert stopping.is_set(), "the reply should still have been streaming"
    shown = broken.last_reply
    assert "*(interrupted)*" in shown and "⚠️ Gemma" in shown, shown
    for internal in ("EngineCore", "stack trace", "Traceback"):
        assert internal not in shown
    while gemma.process.poll() is None:  # the stop runs in its thread
        threading.Event().wait(0.2)
    down = chat(url, "Are you there?", broken.browser)
    assert "listens only once its model has loaded" in down.last_reply

    gemma.start(served_name="hybridchat/gemma-restarted")
    back = chat(url, "And now?", down.browser)
    assert back.ok and not back.warnings, back.warnings
    turns = saved(store_url, back.browser["session"])
    assert [t.status for t in turns][1:3] == ["interrupted", "error"] and turns[1].reply, "the partial reply is kept"
    assert turns[3].status in ("ok", "cut_off") and turns[3].reply


def test_a_keyed_engine_refuses_as_the_stand_in_does_and_room_rehearse_drives_both(tmp_path):
    """A room's Gemma (VLLM_API_KEY, as --api-key): the real engine's answers on its open and
    guarded routes are the stand-in's, word for word. ``room rehearse`` drives each with the key,
    and reads the real engine's queue and prefix cache from its /metrics (the names it exports)."""
    answers, rehearsed, exported = {}, {}, {}
    for kind in ("stand-in", "vllm"):
        server = ModelServer(kind, tmp_path, api_key=KEY)
        server.start()
        try:
            answers[kind] = key_answers(server.url, KEY)
            rehearsed[kind] = rehearse(server.url, KEY, chats=3, turns=2, think_s=0, max_tokens=8)
            exported[kind] = exported_metrics(httpx.get(f"{server.url}/metrics", timeout=30).text)
            if kind == "vllm":
                room = Room(open_progress(f"sqlite:///{tmp_path}/room.db"), KEY, "instructor-FAKE", server.url)
                load_line = room.gemma_load()
        finally:
            server.stop()
    assert answers["vllm"] == answers["stand-in"] == VLLMS_ANSWERS
    assert set(vllm_metrics.NAMES) <= {name for name, _, _ in exported["vllm"]}
    # The stand-in's (and the fault server's) /metrics: the engine's names, types and labels.
    assert exported["stand-in"] <= exported["vllm"], exported["stand-in"] - exported["vllm"]
    assert {name for name, _, _ in exported["stand-in"]} == set(vllm_metrics.NAMES)
    engine, stand_in = rehearsed["vllm"], rehearsed["stand-in"]
    assert len(engine.answered) == len(stand_in.answered) == 6, (engine.errors(), stand_in.errors())
    assert engine.queue_max is not None and engine.running_max is not None and engine.running_max >= 1
    assert engine.prefix_hit_rate is not None and 0 <= engine.prefix_hit_rate <= 1
    assert stand_in.queue_max is not None and stand_in.prefix_hit_rate is None, "no prefix cache in the stand-in"
    assert engine.tokens_per_s() and engine.per_token_s(), "the engine's usage counted the tokens"
    assert load_line is not None and load_line.waiting == 0
