"""A room's shared Gemma, started with vLLM's ``--api-key``: the stand-in refuses as vLLM does
(test_vllm_engine.py holds it to the real engine); the app, on hybridchat's path and on a
learner's, answers with the key and says what is wrong without it; the key reaches no log, no
page and no notebook output."""

from __future__ import annotations

import logging
import shutil
from contextlib import closing
from pathlib import Path

import httpx
import papermill
import pytest
from conftest import running_app
from gradio_client import Client
from notebook_runs import NOTEBOOKS, execute, outputs
from test_app import say, texts
from test_learner import ask, package, settings_for

from hybridchat import serve_local
from hybridchat.backends import build_backends
from hybridchat.chat import ChatService, Conversation
from hybridchat.chat_view import model_choices
from hybridchat.config import Settings
from hybridchat.lab.local import BackgroundServer
from hybridchat.store import open_store

KEY = "room-key-FAKE-0123456789abcdef"
WRONG = "room-key-FAKE-not-the-one"
FORGOT_THE_KEY = ("        headers=endpoints.gemma_headers(),\n", "")  # a learner's caller without it


@pytest.fixture(scope="module")
def room_gemma(tiny_model):
    """The stand-in as a room's Gemma: its vLLM routes want ``KEY``."""
    with BackgroundServer(serve_local.create_app(tiny_model, api_key=KEY)) as url:
        yield url


def key_answers(url: str, key: str) -> list[tuple[int, object]]:
    """What a server answers, status and body, on vLLM's open and guarded routes: without a
    key, with a wrong one, with the key in the bearer scheme's other spelling, with ``key``."""
    answers: list[tuple[int, object]] = [(httpx.get(f"{url}/health", timeout=30).status_code, None)]
    for authorization in (None, f"Bearer {WRONG}", key, f"bearer {key}"):
        headers = {"Authorization": authorization} if authorization else {}
        listed = httpx.get(f"{url}/v1/models", headers=headers, timeout=30)
        answers.append((listed.status_code, listed.json() if listed.status_code != 200 else "models"))
    chat = httpx.post(f"{url}/v1/chat/completions", json={"model": "any", "messages": []}, timeout=30)
    return [*answers, (chat.status_code, chat.json())]


VLLMS_ANSWERS = [  # vLLM 0.32's AuthenticationMiddleware: /health open, /v1 wants "Bearer KEY" (any case)
    (200, None),
    (401, {"error": "Unauthorized"}),
    (401, {"error": "Unauthorized"}),
    (401, {"error": "Unauthorized"}),
    (200, "models"),
    (401, {"error": "Unauthorized"}),
]


def test_the_keyed_stand_in_refuses_as_vllms_api_key_does(room_gemma):
    assert key_answers(room_gemma, KEY) == VLLMS_ANSWERS
    gemini = httpx.get(f"{room_gemma}/v1beta/models/gemini-2.5-flash", timeout=30)
    assert gemini.status_code == 200, "the Gemini stand-in's routes are not vLLM's: no key asked"


def test_the_app_answers_with_the_rooms_key_and_says_so_when_it_is_wrong(room_gemma, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    for key, folder in ((KEY, "right"), (WRONG, "wrong")):
        with running_app(tmp_path / folder, vllm_url=room_gemma, vllm_api_key=key, backends=["gemma"]) as app:
            page = httpx.get(app.url, timeout=30).text + httpx.get(f"{app.url}/config", timeout=30).text
            with closing(Client(app.url, verbose=False)) as client:
                messages, _, _, _ = say(client, "What is the capital of France?", "gemma",
                                          {"visitor": None, "session": None})
            shown = f"{page}\n{messages}"
            assert KEY not in shown and WRONG not in shown, "the key is on no page"
            if key == KEY:
                assert len(messages) == 2 and texts(messages)[-1] and "⚠️" not in texts(messages)[-1]
            else:
                told = texts(messages)[-1]
                assert told.startswith("⚠️") and "refused the API key hybridchat sent (HTTP 401)" in told, told
                assert "HYBRIDCHAT_VLLM_API_KEY" in told and "not reachable" not in told
    [(listed, _)] = model_choices(build_backends(Settings(vllm_url=room_gemma, vllm_api_key=WRONG, backends=["gemma"])))
    assert listed.startswith("Gemma — unavailable: Gemma's server at") and WRONG not in listed, "the selector says why"
    assert KEY not in caplog.text and WRONG not in caplog.text and "HTTP 401" in caplog.text


def test_a_learners_caller_sends_the_rooms_key_and_one_that_does_not_is_told_how(room_gemma, tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/history.db")
    for folder, changes in (("mine", {}), ("forgot", {"callers": FORGOT_THE_KEY})):
        code = package(tmp_path / folder, **changes)
        settings = settings_for(room_gemma, tmp_path, code, vllm_api_key=KEY)
        turn = ask(ChatService(build_backends(settings), store), Conversation("visitor:learner"), "Hi", "my_gemma")
        if not changes:
            assert turn.status != "error" and turn.reply, turn.error
        else:
            assert turn.status == "error" and "raised HTTPError: 401" in turn.error
            assert "send `headers=endpoints.gemma_headers()`" in turn.error, turn.error


def test_a_missing_key_is_named_as_missing(room_gemma, tmp_path):
    settings = settings_for(room_gemma, tmp_path, tmp_path / "none")
    health = build_backends(settings)["gemma"].health()
    assert not health.ok and "wants an API key (HTTP 401)" in health.detail, health.detail


@pytest.mark.slow
def test_notebook_04_calls_the_rooms_gemma_with_the_key_and_stops_at_the_checker_without_it(
    lab_env, room_gemma, tmp_path, monkeypatch
):
    monkeypatch.setenv("HYBRIDCHAT_VLLM_URL", room_gemma)
    monkeypatch.setenv("HYBRIDCHAT_VLLM_API_KEY", KEY)
    copy = Path(shutil.copy(NOTEBOOKS / "04_model_callers.ipynb", tmp_path))  # it writes my_app/ beside it
    text = outputs(execute(copy, copy, MODE="local"))
    assert "✅ call_gemma_model answered" in text and KEY not in text
    monkeypatch.setenv("HYBRIDCHAT_VLLM_API_KEY", WRONG)
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        execute(copy, tmp_path / "wrong.ipynb", MODE="local")
    assert "refused the API key hybridchat sent (HTTP 401)" in str(failure.value), "at the first cell asking Gemma"
    assert WRONG not in str(failure.value)
