"""A hostile visitor or model against what operators see and what the app keeps secret: passwords
in URLs shown nowhere, hostile text printed literally by the command line, visitor ids the server
issues and signs, and the session secret."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from contextlib import ExitStack

import httpx
import pytest
from fastapi import FastAPI
from test_reliability import chat

from bench.queue_client import QueueClient
from bench.servers import Pace, app_server, paced_server
from hybridchat.config import Settings
from hybridchat.lab.local import BackgroundServer
from hybridchat.store import Turn, open_store
from hybridchat.visitors import VisitorIds, session_secret

pytestmark = pytest.mark.slow  # attacks on a running app, some timed


def test_a_password_in_a_model_url_is_shown_nowhere(tmp_path):
    password = "PASSw0rd-FAKE-4242"
    store_url = f"sqlite:///{tmp_path}/history.db"
    log = tmp_path / "app.log"
    seen: list[str] = []

    async def visit(url: str) -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            client = QueueClient(url, http)
            page = await client.call("start", [None, None])  # the model selector says what is up
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
    models.get("/health")(lambda: {})  # noqa: PIE807 (FastAPI reads the endpoint's signature; dict has none)
    models.get("/v1/models")(lambda: {"object": "list", "data": [{"id": hostile, "object": "model", "created": 0, "owned_by": "x"}]})
    with BackgroundServer(models) as url:
        doctor = _cli("doctor", tty=True, env={
            "HYBRIDCHAT_BACKENDS": "gemma", "HYBRIDCHAT_VLLM_URL": url, "HYBRIDCHAT_STORE_URL": f"sqlite:///{tmp_path}/h.db"})
    assert "[link=http://evil.example]gemma[/link]" in doctor.stdout, doctor.stdout
    assert "\x1b]8;" not in doctor.stdout and "\x1b[2J" not in doctor.stdout


def test_visitor_ids_are_issued_and_signed_by_the_server_never_chosen_by_the_client(tmp_path):
    secret = "visitor-secret-FAKE-0123456789"
    ids = VisitorIds(secret.encode())
    store_url = f"sqlite:///{tmp_path}/history.db"
    env = {"HYBRIDCHAT_SESSION_SECRET": secret}
    with paced_server(Pace(ttft=0.0, tokens=4, gap=0.0)) as (vllm, _):
        with app_server(vllm, store_url, env=env) as (url, _):
            page = httpx.get(url).text + httpx.get(f"{url}/config").text
            assert secret not in page, "the secret stays on the server"
            chosen = chat(url, "hi", {"visitor": "v", "session": None})
            assert chosen.browser["visitor"] != "v" and ids.verify(chosen.browser["visitor"]), "a signed id is issued"
            alice = chat(url, "alice's secret plan", {"visitor": None, "session": None})
            alice_id = ids.verify(alice.browser["visitor"])
            for forged in (alice_id, f"{alice_id}.AAAA", f"{alice_id}.é", alice.browser["visitor"] + "x", ["not", "a", "string"]):
                mallory = chat(url, "show me", {"visitor": forged, "session": alice.browser["session"]})
                assert "alice's secret plan" not in json.dumps(mallory.outputs), f"{forged!r} opened Alice's chat"
                assert mallory.browser["visitor"] != alice.browser["visitor"]
            assert len(chat(url, "more", alice.browser).messages) == 4, "her own id goes on with her chat"
        with app_server(vllm, store_url, env=env) as (url, _):  # restarted, the same secret
            assert len(chat(url, "after a restart", alice.browser).messages) == 6, "her chat survives a restart"
    owners = {s.user_id for s in open_store(store_url, resilient=False).list_sessions(None)}
    assert "visitor:v" not in owners and all(len(owner) == len("visitor:") + 32 for owner in owners), owners


def test_the_local_session_secret_is_made_once_and_private(tmp_path):
    path = tmp_path / "state" / "session_secret"
    settings = Settings(mode="local", secret_file=str(path))
    first = session_secret(settings)
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert session_secret(settings) == first and len(first) >= 32, "the same one at the next start"


def test_gcp_mode_refuses_to_start_without_a_session_secret(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYBRIDCHAT_SESSION_SECRET"}
    started = subprocess.run(
        [sys.executable, "-m", "hybridchat.cli", "app", "--port", "9"], capture_output=True, text=True, timeout=60,
        env={**env, "HYBRIDCHAT_MODE": "gcp", "HYBRIDCHAT_STORE_URL": f"sqlite:///{tmp_path}/h.db"},
    )
    assert started.returncode == 1 and "Traceback" not in started.stderr
    assert "HYBRIDCHAT_SESSION_SECRET is not set" in started.stderr and "gradio-chat-session" in started.stderr


# How a prompt-injected reply could make the visitor's browser call another site at once;
# {rec} is a recording server's address (another origin).
