"""A hostile visitor of the deployed app: each attack driven for real over HTTP against the
running app (Gradio's queue API as the page calls it, the private events too), and in Chromium
where the browser is what is attacked. README's Reliability table has a row for each."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from contextlib import ExitStack
from typing import Any

import httpx
from fastapi import FastAPI

from bench.queue_client import QueueClient
from bench.run import Pace, app_server, paced_server
from hybridchat.lab.local import BackgroundServer
from hybridchat.store import Turn, open_store


def visitor() -> dict[str, Any]:
    return {"visitor": None, "session": None}


def test_deleting_a_chat_while_its_reply_streams_breaks_nobody_elses(tmp_path):
    store_url = f"sqlite:///{tmp_path}/history.db"
    log = tmp_path / "app.log"
    with paced_server(Pace(ttft=0.0, tokens=400, gap=0.01)) as (vllm, _), log.open("wb") as sink:
        with app_server(vllm, store_url, env={"HYBRIDCHAT_LOG_LEVEL": "INFO"}, output=sink) as (url, _):

            async def scenario():
                async with httpx.AsyncClient(timeout=60) as http:
                    client = QueueClient(url, http)
                    bob = await client.turn("Bob's own chat", visitor(), max_tokens=4)
                    tab = uuid.uuid4().hex[:12]
                    first = await client.turn("first", visitor(), max_tokens=4, session_hash=tab)
                    streaming_now = asyncio.Event()
                    late = asyncio.create_task(client.turn(
                        "tell me more", first.browser, max_tokens=300, session_hash=tab,
                        on_update=lambda _: streaming_now.set(),
                    ))
                    await asyncio.wait_for(streaming_now.wait(), 30)
                    # "Delete this chat" in a second tab of the same chat: nothing stops the reply.
                    other_tab = uuid.uuid4().hex[:12]
                    chat_id = first.browser["session"]
                    await client.call("start", [first.browser], session_hash=other_tab)  # the page loads
                    await client.call("open_session", [chat_id, first.browser], session_hash=other_tab)
                    await client.call("delete_chat", [None, first.browser], session_hash=other_tab)
                    late_reply = await late
                    again = await client.turn("Bob again", bob.browser, max_tokens=4)
                    return first, late_reply, again

            first, late, bob_again = asyncio.run(scenario())
    deleted = first.browser["session"]
    assert any("deleted while the reply was on its way" in w for w in late.warnings), late.warnings
    assert not any("Not saved yet" in w for w in late.warnings), "the deleter is not promised a save"
    assert late.browser["session"] is None and late.messages == [], "the deleted chat is not shown again"
    sidebar = [choice[1] for choice in bob_again.outputs[4]["choices"]]
    assert sidebar == [bob_again.browser["session"]], "another visitor's sidebar still lists his chat"
    store = open_store(store_url, resilient=False)
    assert deleted not in [s.session_id for s in store.list_sessions(None)], "the deleted chat stays deleted"
    logged = log.read_text()
    assert "Application shutdown failed" not in logged and "Traceback" not in logged, logged[-2000:]


def test_a_password_in_a_model_url_is_shown_nowhere(tmp_path):
    password = "PASSw0rd-FAKE-4242"
    store_url = f"sqlite:///{tmp_path}/history.db"
    log = tmp_path / "app.log"
    seen: list[str] = []

    async def visit(url: str) -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            client = QueueClient(url, http)
            page = await client.call("start", [None])  # the model selector says what is up
            seen.append(json.dumps(page.outputs))
            for model in ("gemma", "gemini"):
                reply = await client.turn("hello", page.outputs[0], model=model)
                seen.append(json.dumps(reply.outputs) + json.dumps(reply.warnings))

    with ExitStack() as gemma_up, log.open("wb") as sink:
        gemma, _ = gemma_up.enter_context(paced_server(Pace(ttft=0.0, tokens=8, gap=0.0)))
        gemma = gemma.replace("http://", f"http://alice:{password}@")
        settings = {
            "HYBRIDCHAT_BACKENDS": "gemma,gemini", "HYBRIDCHAT_RETRY_ATTEMPTS": "1", "HYBRIDCHAT_LOG_LEVEL": "DEBUG",
            "HYBRIDCHAT_GEMINI_URL": f"http://bob:{password}@127.0.0.1:9/?key={password}",
        }
        with app_server(gemma, store_url, env=settings, output=sink) as (url, _):
            asyncio.run(visit(url))  # Gemma up, Gemini down
            gemma_up.close()
            asyncio.run(visit(url))  # both down
    assert "tok0" in seen[1], "Gemma answered: its requests were logged"
    assert "not reachable at http://***@127.0.0.1" in seen[3] + seen[4], "Gemma's address is shown, redacted"
    doctor = subprocess.run(
        [sys.executable, "-m", "hybridchat.cli", "doctor"], capture_output=True, text=True,
        env={**os.environ, **settings, "HYBRIDCHAT_VLLM_URL": gemma, "HYBRIDCHAT_STORE_URL": store_url, "COLUMNS": "300"},
    )
    assert "not reachable" in doctor.stdout, doctor.stdout
    logged = log.read_text()
    for where, text in {"the page": "".join(seen), "the log": logged, "doctor": doctor.stdout + doctor.stderr}.items():
        assert password not in text, f"the password shows in {where}"
        assert "alice" not in text, f"the user name shows in {where}"


HOSTILE_TEXT = [
    "[/]",  # crashed `sessions list` (Rich markup)
    "[link=http://evil.example]click me[/link]",  # a hidden hyperlink
    "\x1b]8;;http://evil.example\x07innocent\x1b]8;;\x07",  # the terminal's own hyperlink
    "\x1b[2J\x1b[31mscreen wiped\x07",  # clear screen, colour, bell
    "abc\u202edlrow",  # right-to-left override
]


def _cli(*argv: str, env: dict[str, str], tty: bool = False) -> subprocess.CompletedProcess:
    terminal = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "0"} if tty else {}
    return subprocess.run(
        [sys.executable, "-m", "hybridchat.cli", *argv], capture_output=True, text=True,
        env={**os.environ, "COLUMNS": "400", **terminal, **env},
    )


def test_operator_tools_print_visitor_and_model_text_literally(tmp_path):
    store_url = f"sqlite:///{tmp_path}/history.db"
    store = open_store(store_url, resilient=False)
    for text in HOSTILE_TEXT:
        session = store.create_session("visitor:" + text)
        store.append(session, Turn(user=text, model="gemma", reply=text))
    env = {"HYBRIDCHAT_STORE_URL": store_url}
    for tty in (False, True):
        listed = _cli("sessions", "list", env=env, tty=tty)
        assert listed.returncode == 0, listed.stderr
        shown = _cli("sessions", "show", session, env=env, tty=tty)
        assert shown.returncode == 0, shown.stderr
        for output in (listed.stdout, shown.stdout):
            assert "\x1b]8;" not in output and "\x07" not in output and "\x1b[2J" not in output
            assert "\u202e" not in output
        assert "\\x1b[2J" in listed.stdout and "\\u202e" in shown.stdout, "escapes are shown, written out"
        assert "[/]" in listed.stdout and "[link=http://evil.example]" in listed.stdout, "markup is shown as text"
        if not tty:
            assert "\x1b" not in listed.stdout + shown.stdout


def test_doctor_prints_a_hostile_model_name_literally(tmp_path):
    hostile = "[link=http://evil.example]gemma[/link]\x1b]8;;http://evil.example\x07x\x1b[2J"
    models = FastAPI()
    models.get("/health")(lambda: {})
    models.get("/v1/models")(lambda: {"object": "list", "data": [{"id": hostile, "object": "model", "created": 0, "owned_by": "x"}]})
    with BackgroundServer(models) as url:
        doctor = _cli("doctor", tty=True, env={
            "HYBRIDCHAT_BACKENDS": "gemma", "HYBRIDCHAT_VLLM_URL": url, "HYBRIDCHAT_STORE_URL": f"sqlite:///{tmp_path}/h.db"})
    assert "[link=http://evil.example]gemma[/link]" in doctor.stdout, doctor.stdout
    assert "\x1b]8;" not in doctor.stdout and "\x1b[2J" not in doctor.stdout
