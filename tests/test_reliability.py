"""Reliability: each fault injected for real on 127.0.0.1 against the running app, through its
HTTP API (Gradio's queue, as a browser calls it). After each, the visitor has been told what
happened, the session goes on, and the store holds every turn the visitor saw, once, in order.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
import uuid
from typing import Any

import httpx
import pytest
from conftest import EMULATOR_PROJECT, running_app, wait_for
from fault_server import REPLY

from bench.queue_client import QueueClient, Reply, text_of
from bench.servers import Pace, app_server, paced_server, rss_mib
from hybridchat.app import create_app
from hybridchat.config import Settings
from hybridchat.lab.local import BackgroundServer, free_port
from hybridchat.store import ResilientStore, open_store
from hybridchat.store.firestore import FirestoreStore
from hybridchat.store.sqlite import SqliteStore

# The paced server's reply to max_tokens=n is "tok0 tok1 … tok{n-1} ".
SLOW = Pace(ttft=0.0, tokens=400, gap=0.02)


def paced_reply(tokens: int) -> str:
    return "".join(f"tok{n} " for n in range(tokens))


def chat(url: str, message: str, browser: dict[str, Any], **options: Any) -> Reply:
    """One turn through the app's queue API, from a fresh browser tab."""

    async def turn() -> Reply:
        async with httpx.AsyncClient(timeout=60) as http:
            return await QueueClient(url, http).turn(message, browser, **options)

    return asyncio.run(turn())


def visitor() -> dict[str, Any]:
    """A new browser: the app issues its visitor id."""
    return {"visitor": None, "session": None}


def saved(store_url: str, session: str) -> list[tuple[str, str]]:
    """(message, status) of each stored turn, read afresh from the database."""
    store = open_store(store_url, resilient=False)
    try:
        return [(turn.user, turn.status) for turn in store.load(session)]
    finally:
        store.close()


# --- Gemma (vLLM) and Gemini faults -------------------------------------------------------------


@pytest.fixture(scope="module")
def faulty_app(_fault_server, tmp_path_factory):
    """The app as configured from settings, with Gemma and Gemini both at the fault server."""
    with running_app(
        tmp_path_factory.mktemp("faults"),
        vllm_url=_fault_server.url,
        gemma_model="google/gemma-3-12b-it",
        gemini_url=_fault_server.url,
        google_api_key="test-key",
        timeout=1,
        retry_attempts=3,
        retry_backoff=0.01,
        stream_interval=0,
    ) as app:
        yield app


GEMMA_FAULTS = {  # mode: (what the visitor is told, requests made: retried only when transient)
    "loading": ("Gemma is starting (its model is still loading)", 3),
    "slow": ("Gemma did not answer within 1 s", 1),
    "malformed": ("Gemma sent an answer that is not valid JSON", 1),
    "truncated": ("Gemma's reply was cut off: the stream ended early", 1),
    "server_error": ("Gemma failed with a server error (HTTP 500)", 3),
}
GEMINI_FAULTS = {
    "quota": ("Gemini is over its quota or rate limit (HTTP 429)", 3),
    "server_error": ("Gemini failed with a server error (HTTP 500)", 3),
    "safety_prompt": ("Gemini blocked this message for safety (SAFETY)", 1),
    "safety_reply": ("Gemini withheld its reply (SAFETY)", 1),
    "empty": ("Gemini returned an empty reply", 1),
}


@pytest.mark.parametrize(
    ("model", "mode"), [("gemma", mode) for mode in GEMMA_FAULTS] + [("gemini", mode) for mode in GEMINI_FAULTS]
)
def test_a_model_fault_is_told_and_the_session_goes_on(model, mode, fault_server, faulty_app):
    url, store_url = faulty_app
    told, requests = (GEMMA_FAULTS if model == "gemma" else GEMINI_FAULTS)[mode]
    first = chat(url, "hello", visitor(), model=model)
    assert first.last_reply == REPLY

    fault_server.reset()
    fault_server.mode, fault_server.delay = mode, 2
    faulty = chat(url, "are you there?", first.browser, model=model)
    posts = fault_server.posts()
    fault_server.reset()
    after = chat(url, "and now?", faulty.browser, model=model)

    shown = faulty.last_reply
    assert faulty.ok and told in shown, shown
    assert "Traceback" not in shown and "Exception" not in shown
    assert posts == requests
    partial = mode == "truncated"
    if partial:
        assert shown.startswith(REPLY) and "*(interrupted)*" in shown, "the partial reply is kept and marked"
    assert after.ok and after.last_reply == REPLY
    assert [text_of(m) for m in after.messages[::2]] == ["hello", "are you there?", "and now?"]
    assert saved(store_url, after.browser["session"]) == [
        ("hello", "ok"), ("are you there?", "interrupted" if partial else "error"), ("and now?", "ok")
    ]


def test_a_transient_gemini_error_is_retried_into_an_answer(fault_server, faulty_app):
    url, _ = faulty_app
    fault_server.mode, fault_server.failures = "flaky", 2
    reply = chat(url, "hello", visitor(), model="gemini")
    assert reply.last_reply == REPLY and not reply.warnings
    assert fault_server.posts() == 3


def test_gemma_down_at_start_then_killed_mid_reply_then_back(tmp_path):
    port = free_port()
    store_url = f"sqlite:///{tmp_path}/history.db"
    settings = Settings(
        store_url=store_url, vllm_url=f"http://127.0.0.1:{port}", gemma_model="paced/gemma-stand-in",
        backends=["gemma"], retry_attempts=2, retry_backoff=0.01, stream_interval=0,
    )
    with BackgroundServer(create_app(settings)) as url:
        down = chat(url, "anyone there?", visitor())
        assert "Gemma is not reachable" in down.last_reply and "Is the server running?" in down.last_reply

        asked_while_streaming = []
        with paced_server(SLOW, port) as (_, server):
            def kill_after_a_few_tokens(outputs: list[Any]) -> None:
                asked_while_streaming.append(text_of(outputs[0][-2]))
                if "tok3" in text_of(outputs[0][-1]) and server.poll() is None:
                    server.kill()  # SIGKILL: the connection drops mid-stream

            cut = chat(url, "tell me a long story", down.browser, max_tokens=400, on_update=kill_after_a_few_tokens)
        assert set(asked_while_streaming) == {"tell me a long story"}, "the visitor's own message shows"
        assert cut.ok and cut.last_reply.startswith(paced_reply(4))
        assert "*(interrupted)*" in cut.last_reply and "Gemma stopped answering mid-reply" in cut.last_reply

        with paced_server(SLOW, port):
            back = chat(url, "are you back?", cut.browser, max_tokens=3)
        assert back.last_reply == paced_reply(3)

    session = back.browser["session"]
    assert saved(store_url, session) == [
        ("anyone there?", "error"), ("tell me a long story", "interrupted"), ("are you back?", "ok")
    ]
    partial = SqliteStore(f"{tmp_path}/history.db").load(session)[1].reply
    assert partial.startswith(paced_reply(4)) and "interrupted" not in partial, "the partial reply as streamed"


# --- the history store down ---------------------------------------------------------------------


@pytest.mark.slow
def test_firestore_stopped_mid_session_then_back_loses_no_turn(firestore_emulator, fault_server):
    firestore_emulator.reset()
    store = ResilientStore(
        FirestoreStore("chat-app-db", project=EMULATOR_PROJECT, timeout=1), attempts=2, backoff=0.01, retry_every=0.5
    )
    settings = Settings(vllm_url=fault_server.url, gemma_model="m", backends=["gemma"], stream_interval=0)
    tab = uuid.uuid4().hex  # one browser tab all along
    with BackgroundServer(create_app(settings, store=store)) as url:
        replies = [chat(url, "turn 0", visitor(), session_hash=tab)]
        firestore_emulator.stop(keep_data=True)
        try:
            for n in (1, 2):
                replies.append(chat(url, f"turn {n}", replies[-1].browser, session_hash=tab))
            reloaded = chat(url, "from a new tab", replies[-1].browser)
        finally:
            firestore_emulator.start()
        wait_for(lambda: store.pending == 0)  # saved in the background: nobody has to send anything
        replies.append(chat(url, "turn 3", replies[-1].browser, session_hash=tab))

    for reply in replies:
        assert reply.last_reply == REPLY, "the replies still came while the database was down"
    for reply in replies[1:3]:
        (warning,) = reply.warnings  # once per turn, not again for the sidebar
        assert warning.startswith("Not saved yet") and "will be saved when it is back" in warning
    assert not replies[3].warnings
    # A tab opened during the outage cannot load the chat: it says so and keeps the message.
    assert any("cannot be loaded right now" in w for w in reloaded.warnings), reloaded.warnings
    assert reloaded.outputs[1] == "from a new tab" and reloaded.browser == replies[2].browser
    session = replies[-1].browser["session"]
    fresh = FirestoreStore("chat-app-db", project=EMULATOR_PROJECT)
    assert [turn.user for turn in fresh.load(session)] == ["turn 0", "turn 1", "turn 2", "turn 3"]


def test_sqlite_locked_mid_session_then_free_loses_no_turn(fault_server, tmp_path):
    path = tmp_path / "history.db"
    store = ResilientStore(SqliteStore(path, busy_timeout=0.2), attempts=2, backoff=0.01, retry_every=0.5)
    settings = Settings(vllm_url=fault_server.url, gemma_model="m", backends=["gemma"], stream_interval=0)
    tab = uuid.uuid4().hex
    with BackgroundServer(create_app(settings, store=store)) as url:
        replies = [chat(url, "turn 0", visitor(), session_hash=tab)]
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        try:
            for n in (1, 2):
                replies.append(chat(url, f"turn {n}", replies[-1].browser, session_hash=tab))
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        wait_for(lambda: store.pending == 0)

    assert all(reply.last_reply == REPLY for reply in replies)
    assert all([w[:13] for w in reply.warnings] == ["Not saved yet"] for reply in replies[1:])
    session = replies[-1].browser["session"]
    assert [turn.user for turn in SqliteStore(path).load(session)] == ["turn 0", "turn 1", "turn 2"]


# --- the app process killed ---------------------------------------------------------------------


@pytest.mark.slow
def test_the_app_killed_mid_reply_and_restarted_keeps_every_session(tmp_path):
    store_url = f"sqlite:///{tmp_path}/history.db"
    env = {"HYBRIDCHAT_STREAM_INTERVAL": "0"}
    alice, bob = visitor(), visitor()
    with paced_server(SLOW) as (vllm, _):
        with app_server(vllm, store_url, env=env) as (url, pid):
            for n in range(3):
                alice = chat(url, f"alice {n}", alice, max_tokens=3).browser
            bob = chat(url, "bob 0", bob, max_tokens=3).browser

            def kill_the_app(outputs: list[Any]) -> None:
                if "tok3" in text_of(outputs[0][-1]):
                    os.kill(pid, signal.SIGKILL)

            try:
                unfinished = chat(url, "bob 1", bob, max_tokens=400, on_update=kill_the_app)
                assert not unfinished.ok
            except httpx.HTTPError:
                pass  # the connection dropped with the process

        with app_server(vllm, store_url, env=env) as (url, _):
            resumed = chat(url, "alice 3", alice, max_tokens=3)
            bob_again = chat(url, "bob 2", bob, max_tokens=3)

    assert [text_of(m) for m in resumed.messages[::2]] == ["alice 0", "alice 1", "alice 2", "alice 3"]
    assert resumed.outputs[4]["value"] == alice["session"], "the sidebar still lists her chat"
    assert saved(store_url, alice["session"]) == [(f"alice {n}", "ok") for n in range(4)]
    # Bob's unfinished reply died with the process; everything he had finished is there.
    assert saved(store_url, bob["session"]) == [("bob 0", "ok"), ("bob 2", "ok")]
    assert [text_of(m) for m in bob_again.messages[::2]] == ["bob 0", "bob 2"]
    with sqlite3.connect(tmp_path / "history.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# --- load ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_app_streams_as_many_chats_at_once_as_its_concurrency_setting(tmp_path):
    """Above Gradio's default of 40 worker threads too."""
    chats = 48

    async def at_once(url: str) -> list[Reply]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=4 * chats)) as http:
            client = QueueClient(url, http)
            return await asyncio.gather(*(client.turn(f"chat {n}", visitor(), max_tokens=1) for n in range(chats)))

    with paced_server(Pace(ttft=3, tokens=1, gap=0)) as (vllm, _):
        env = {"HYBRIDCHAT_CONCURRENCY": str(chats)}
        with app_server(vllm, f"sqlite:///{tmp_path}/history.db", env=env) as (url, _):
            replies = asyncio.run(at_once(url))
        streams = httpx.get(f"{vllm}/streams").json()
    assert all(reply.last_reply == paced_reply(1) for reply in replies)
    assert streams["most"] == chats



SESSIONS, TURNS, CLIENTS = 200, 10, 32
LOAD_PACE = Pace(ttft=0.02, tokens=10, gap=0.005)


async def _load(url: str) -> tuple[list[str], dict[int, str]]:
    """Each of ``SESSIONS`` visitors chats ``TURNS`` turns in one tab, ``CLIENTS`` at a time:
    what went wrong, if anything, and each visitor's session."""
    problems: list[str] = []
    sessions: dict[int, str] = {}
    slots = asyncio.Semaphore(CLIENTS)
    limits = httpx.Limits(max_connections=4 * CLIENTS, max_keepalive_connections=4 * CLIENTS)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        client = QueueClient(url, http)

        async def session(index: int) -> None:
            async with slots:
                browser, tab = visitor(), uuid.uuid4().hex[:12]
                for n in range(TURNS):
                    try:
                        reply = await client.turn(f"s{index} t{n}", browser, session_hash=tab)
                    except httpx.HTTPError as exc:
                        problems.append(f"s{index} t{n}: {exc!r}")
                        return
                    if not reply.ok or reply.warnings or reply.last_reply != paced_reply(LOAD_PACE.tokens):
                        problems.append(f"s{index} t{n}: {reply.warnings or reply.last_reply[:200]}")
                        return
                    browser = reply.browser
                sessions[index] = browser["session"]

        await asyncio.gather(*(session(i) for i in range(SESSIONS)))
    return problems, sessions


@pytest.mark.slow
def test_200_sessions_of_10_turns_at_32_at_once(tmp_path):
    store_url = f"sqlite:///{tmp_path}/history.db"
    with paced_server(LOAD_PACE) as (vllm, _), app_server(vllm, store_url) as (url, pid):
        chat(url, "warm up", visitor())
        idle = rss_mib(pid)
        problems, sessions = asyncio.run(_load(url))
        time.sleep(2)
        after = rss_mib(pid)
    assert problems == [], problems[:5]
    store = open_store(store_url, resilient=False)
    owners = {store.get_session(session).user_id for session in sessions.values()}
    assert len(sessions) == len(owners) == SESSIONS, "one session for each visitor"
    for index, session in sessions.items():
        assert [turn.user for turn in store.load(session)] == [f"s{index} t{n}" for n in range(TURNS)]
    assert after < idle + 100, f"memory {idle:.0f} MiB idle, {after:.0f} MiB after the load"
