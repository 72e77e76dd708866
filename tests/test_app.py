"""The chat app through its HTTP API (gradio_client), on 127.0.0.1 with real backends and store."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from contextlib import closing

import httpx
import pytest
from conftest import EMULATOR_PROJECT, Recording, api_key_client, running_app
from gradio_client import Client
from test_iap import turn

from bench.queue_client import model_and_text
from bench.servers import serving
from hybridchat.app import create_app
from hybridchat.backends import (
    GenerationParams,
    RetryPolicy,
    VllmBackend,
    VllmClient,
    build_backends,
)
from hybridchat.backends.gemini import GeminiBackend
from hybridchat.chat import ChatService, Conversation
from hybridchat.chat_view import model_choices
from hybridchat.config import Settings
from hybridchat.errors import SessionNotFound
from hybridchat.history import Message
from hybridchat.lab.local import BackgroundServer, free_port
from hybridchat.serve_local import STAND_IN_PREFIX
from hybridchat.store import open_store

TOKENS = 12


@pytest.fixture(scope="module")
def app_server(stand_in, tmp_path_factory):
    backends = {
        "gemma": VllmBackend(VllmClient(stand_in, retry=RetryPolicy(backoff=0.01)), label="Gemma"),
        "gemini": Recording(GeminiBackend(api_key_client(stand_in), label="Gemini 2.5 Flash (local stand-in)")),
        "down": VllmBackend(
            VllmClient("http://127.0.0.1:9", retry=RetryPolicy(attempts=1), connect_timeout=1), name="down", label="Broken Gemma"
        ),
    }
    # Every piece streamed as it comes (the default sends at most one update per 100 ms).
    with running_app(tmp_path_factory.mktemp("app"), backends, stream_interval=0) as app:
        yield app.url, app.store_url, backends["gemini"], backends


@pytest.fixture
def client(app_server):
    with closing(Client(app_server[0], verbose=False)) as client:
        yield client


def say(client, message, model, browser, persona=""):
    """One turn through the /chat endpoint: (messages, textbox, browser state, sessions)."""
    return client.predict(message, model, 0.1, 0.95, TOKENS, persona, browser, api_name="/chat")[:4]


def texts(messages):
    """What each message says, without the line over a reply that names its model."""
    return [model_and_text(m)[1] for m in messages]


def models(messages):
    return [model_and_text(m)[0] for m in messages if m["role"] == "assistant"]


def test_healthz(app_server):
    assert httpx.get(f"{app_server[0]}/healthz").json() == {"status": "ok"}


def test_switching_model_keeps_the_whole_history(client, app_server):
    browser = {"visitor": "switcher", "session": None}
    messages, box, browser, _ = say(client, "What is the capital of France?", "gemma", browser)
    first = texts(messages)[-1]
    assert box == "" and first
    messages, _, browser, sessions = say(client, "And of Germany?", "gemini", browser, persona="Be brief.")
    saved = open_store(app_server[1]).load(browser["session"])
    # The tiny model never ends a reply by itself: each stops at max tokens, and says so.
    assert first == f"{saved[0].reply.strip()}\n\n*(stopped at the max-tokens limit)*"
    # Gemini was asked with Gemma's turn as its context.
    assert app_server[2].histories[-1] == [Message("user", "What is the capital of France?"), Message("assistant", saved[0].reply)]
    assert app_server[2].params[-1].system_prompt == "Be brief."
    assert texts(messages)[-2] == "And of Germany?" and texts(messages)[-1]
    gemma_label = app_server[3]["gemma"].label
    assert gemma_label.startswith(f"Gemma ({STAND_IN_PREFIX}"), "named as the server serves it"
    assert models(messages) == [gemma_label, "Gemini 2.5 Flash (local stand-in)"], "each reply says who wrote it"
    assert [t.model_label for t in saved] == models(messages)
    assert [c[1] for c in sessions["choices"]] == [browser["session"]]
    assert [(t.model, t.status) for t in saved] == [("gemma", "cut_off"), ("gemini", "cut_off")]
    assert saved[0].params["temperature"] == 0.1 and saved[0].latency_ms > 0
    assert saved[0].prompt_tokens > 0 and saved[1].completion_tokens > 0


def test_a_max_tokens_gradio_lets_through_but_no_model_takes_keeps_the_message_and_asks_none(client, app_server):
    asked, sessions = len(app_server[2].histories), len(open_store(app_server[1]).list_sessions(None))
    _, box, _, _ = client.predict("Hi", "gemini", 0.1, 0.95, 12.5, "", {"visitor": "out-of-range"}, api_name="/chat")[:4]
    assert box == "Hi", "the message waits in the box"
    assert len(app_server[2].histories) == asked
    assert len(open_store(app_server[1]).list_sessions(None)) == sessions, "nothing saved"


def test_each_turn_logs_one_line_without_the_text(client, caplog):
    with caplog.at_level(logging.INFO, logger="hybridchat.turns"):
        say(client, "my secret plan", "gemma", {"visitor": "logged", "session": None})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "hybridchat.turns"]
    assert len(lines) == 1 and lines[0]["model"] == "gemma" and lines[0]["status"] == "cut_off"
    assert lines[0]["completion_tokens"] > 0 and lines[0]["latency_ms"] > 0 and lines[0]["session"]
    assert "secret" not in caplog.text


def test_replies_stream_in_several_chunks(client):
    job = client.submit("Tell me a story", "gemini", 0.1, 0.95, TOKENS, "", {"visitor": "streamer"}, api_name="/chat")
    updates = list(job)
    assert len(updates) > 3
    partials = [texts(update[0])[-1] for update in updates[:-1]]
    assert any(0 < len(p) < len(texts(job.result()[0])[-1]) for p in partials)


def test_a_session_is_listed_and_resumed_from_another_connection(app_server, client):
    browser = {"visitor": "returning", "session": None}
    _, _, browser, _ = say(client, "Remember the number 7", "gemma", browser)
    with closing(Client(app_server[0], verbose=False)) as later:  # a reload: fresh server-side state
        messages, _, again, sessions = say(later, "What number?", "gemini", browser)
    assert again["session"] == browser["session"]
    assert texts(messages)[0::2] == ["Remember the number 7", "What number?"]
    assert models(messages)[0].startswith("Gemma (") and models(messages)[1].startswith("Gemini"), "also when resumed"
    assert len(sessions["choices"]) == 1


def test_a_backend_that_is_down_answers_with_a_message_and_the_chat_goes_on(client):
    browser = {"visitor": "unlucky", "session": None}
    messages, _, browser, _ = say(client, "Hello?", "down", browser)
    assert "not reachable" in texts(messages)[-1] and texts(messages)[-1].startswith("⚠️")
    messages, _, _, _ = say(client, "Hello again", "gemma", browser)
    assert len(messages) == 4 and texts(messages)[-1] and "⚠️" not in texts(messages)[-1]


def test_empty_and_oversized_messages_are_refused_and_kept(client):
    browser = {"visitor": "typist", "session": None}
    messages, box, _, _ = say(client, "  \n ", "gemma", browser)
    assert messages == [] and box == "  \n "
    huge = "x" * (40 * 1024)
    messages, box, _, _ = say(client, huge, "gemma", browser)
    assert messages == [] and box == huge, "the refused text stays in the box"


def test_control_characters_are_stripped_before_anything_is_saved(client, app_server):
    browser = {"visitor": "controls", "session": None}
    _, _, browser, _ = say(client, "he\x00llo\x1b[31m there", "gemma", browser)
    assert open_store(app_server[1]).load(browser["session"])[0].user == "hello[31m there"


def test_visitors_never_see_each_others_sessions(app_server, client):
    alice = {"visitor": "alice", "session": None}
    _, _, alice, _ = say(client, "Alice's secret", "gemma", alice)
    with closing(Client(app_server[0], verbose=False)) as mallory_client:
        # Mallory knows Alice's session id and tries to continue it.
        messages, _, mallory, sessions = say(mallory_client, "Tell me", "gemma", {"visitor": "mallory", "session": alice["session"]})
    assert "Alice's secret" not in texts(messages)
    assert mallory["session"] != alice["session"]
    assert [c[1] for c in sessions["choices"]] == [mallory["session"]]
    assert [t.user for t in open_store(app_server[1]).load(alice["session"])] == ["Alice's secret"]


def test_an_unreachable_model_is_listed_as_unavailable_with_the_reason(stand_in, tiny_model_dir):
    down = VllmBackend(VllmClient("http://127.0.0.1:9", retry=RetryPolicy(attempts=1), connect_timeout=1), label="Gemma")
    up = VllmBackend(VllmClient(stand_in), name="up", label="Gemma up")
    choices = {name: label for label, name in model_choices({"gemma": down, "up": up})}
    assert choices["gemma"].startswith("Gemma — unavailable: Gemma is not reachable at http://127.0.0.1:9")
    assert choices["up"] == f"Gemma up ({STAND_IN_PREFIX}{tiny_model_dir.name})", "named as the server serves it"


def test_only_the_owner_can_open_or_delete_a_session(tmp_path, stand_in):
    service = ChatService({"gemma": VllmBackend(VllmClient(stand_in), label="Gemma")}, open_store(f"sqlite:///{tmp_path}/h.db"))
    conversation = Conversation("visitor:alice")
    list(service.respond(conversation, "Hi", "gemma", GenerationParams(max_tokens=4)))
    with pytest.raises(SessionNotFound):
        service.open("visitor:mallory", conversation.session_id)
    with pytest.raises(SessionNotFound):
        service.delete("visitor:mallory", conversation.session_id)
    service.delete("visitor:alice", conversation.session_id)
    assert service.store.list_sessions("visitor:alice") == []


@pytest.mark.slow
def test_with_login_history_belongs_to_the_user_name(stand_in, tmp_path):
    store_url = f"sqlite:///{tmp_path}/h.db"
    backends = {"gemma": VllmBackend(VllmClient(stand_in), label="Gemma")}
    web = create_app(Settings(store_url=store_url), backends=backends, auth=[("alice", "wonderland"), ("bob", "builder")])
    with BackgroundServer(web) as url:
        # Without login nothing answers, the chat queue included.
        assert httpx.get(f"{url}/config").status_code == 401
        assert httpx.post(f"{url}/gradio_api/queue/join", json={}).status_code == 401
        with closing(Client(url, auth=("alice", "wonderland"), verbose=False)) as alice:
            _, _, browser, _ = say(alice, "Hi", "gemma", {"visitor": "some-browser", "session": None})
        # Another browser of Alice's finds the same chat.
        with closing(Client(url, auth=("alice", "wonderland"), verbose=False)) as phone:
            messages, _, again, _ = say(phone, "Me again", "gemma", {"visitor": "her-phone", "session": browser["session"]})
        # Bob, even with her browser's id and her session's id, gets a chat of his own.
        with closing(Client(url, auth=("bob", "builder"), verbose=False)) as bob:
            his, _, his_browser, sidebar = say(bob, "Show me hers", "gemma", dict(browser))
    assert again["session"] == browser["session"] and len(messages) == 4
    assert texts(his)[::2] == ["Show me hers"] and his_browser["session"] != browser["session"]
    assert [choice[1] for choice in sidebar["choices"]] == [his_browser["session"]]
    store = open_store(store_url)
    assert sorted(s.user_id for s in store.list_sessions(None)) == ["user:alice", "user:bob"]
    assert [t.user for t in store.load(browser["session"])] == ["Hi", "Me again"]


def test_behind_a_proxy_links_use_the_root_path_and_forwarded_host(stand_in, tmp_path):
    backends = {"gemma": VllmBackend(VllmClient(stand_in), label="Gemma")}
    web = create_app(Settings(store_url=f"sqlite:///{tmp_path}/h.db"), backends=backends, root_path="/hybrid")
    with BackgroundServer(web) as url:
        assert httpx.get(f"{url}/config").json()["root"] == f"{url}/hybrid"
        forwarded = {"x-forwarded-proto": "https", "x-forwarded-host": "chat.example.com"}
        assert httpx.get(f"{url}/config", headers=forwarded).json()["root"] == "https://chat.example.com/hybrid"
        assert httpx.get(f"{url}/healthz").status_code == 200


@pytest.mark.parametrize(
    ("command", "told"),
    [
        (["sessions", "show", "nope"], "hybridchat: No session 'nope'."),
        (["app", "--port", "9"], "hybridchat: The history file {blocked}/h.db cannot be opened"),
    ],
)
def test_the_command_line_reports_errors_without_a_traceback(tmp_path, command, told):
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # a file where the store's folder should be
    store = tmp_path / "h.db" if command[0] == "sessions" else blocked / "h.db"
    env = {**os.environ, "HYBRIDCHAT_STORE_URL": f"sqlite:///{store}"}
    result = subprocess.run([sys.executable, "-m", "hybridchat.cli", *command], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith(told.format(blocked=blocked)), result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_resumed_chat_selects_the_model_of_its_last_turn(app_server, client):
    url = app_server[0]
    _, _, browser, _ = say(client, "Hi", "gemma", {"visitor": None, "session": None})
    _, _, browser, _ = say(client, "And you?", "gemini", browser)
    page = turn(url, "", {}, api_name="start", data=[browser, 50], tab="reloaded")
    assert page.ok and page.outputs[5]["value"] == "gemini", "not the first model: the chat's last"
    assert page.outputs[7] == 1024, "the max-tokens slider starts at that model's default"
    opened = turn(url, "", {}, api_name="open_session", data=[browser["session"], browser], tab="reloaded")
    assert opened.ok and opened.outputs[3] == "gemini"
    fresh = turn(url, "", {}, api_name="start", data=[{"visitor": None, "session": None}, 50])
    assert fresh.outputs[5]["value"] == "gemma", "a new chat starts on the first model"


def test_a_model_that_was_unavailable_is_shown_available_without_a_reload(fault_server, tmp_path):
    fault_server.mode = "loading"
    backends = {"gemma": VllmBackend(VllmClient(fault_server.url, retry=RetryPolicy(attempts=1)))}
    with running_app(tmp_path, backends) as (url, _):
        page = turn(url, "", {}, api_name="start", data=[{"visitor": None, "session": None}, 50])
        [(label, _)] = page.outputs[5]["choices"]
        assert "unavailable: Gemma is starting" in label
        assert page.outputs[8]["active"] is True, "the selector asks again while a model is unavailable"
        fault_server.mode = "ok"
        later = turn(url, "", {}, api_name="recheck_models", data=[])
    assert later.ok and later.outputs[0]["choices"] == [["Gemma (google/gemma-3-12b-it)", "gemma"]]
    assert later.outputs[1]["active"] is False, "and stops once every model answers"


def test_in_local_mode_replies_start_capped_at_the_small_models_default(tiny_model_dir):
    local = build_backends(Settings(mode="local", backends=["gemma", "gemini", "local"], local_model=str(tiny_model_dir)))
    cloud = build_backends(Settings(mode="gcp", google_cloud_project="p", backends=["gemma", "gemini"]))
    assert {backend.default_max_tokens for backend in local.values()} == {256}
    assert {backend.default_max_tokens for backend in cloud.values()} == {1024}, "the codelab's, for Gemma 3 and Gemini"


@pytest.mark.slow
def test_the_app_logs_its_turns_and_no_client_chatter_at_info(stand_in, tmp_path):
    port, log = free_port(), tmp_path / "app.log"
    env = {"HYBRIDCHAT_VLLM_URL": stand_in, "HYBRIDCHAT_GEMINI_URL": stand_in, "GOOGLE_API_KEY": "local-stand-in",
           "HYBRIDCHAT_STORE_URL": f"sqlite:///{tmp_path}/h.db", "HYBRIDCHAT_SESSION_SECRET": "log-test",
           "HYBRIDCHAT_LOG_LEVEL": "INFO"}
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as output, serving([sys.executable, "-m", "hybridchat.cli", "app", "--port", str(port)],
                                           f"{url}/healthz", env=env, output=output):
        with closing(Client(url, verbose=False)) as visitor:
            for model in ("gemma", "gemini"):
                say(visitor, "Hi", model, {"visitor": None, "session": None})
    written = log.read_text()
    assert written.count('"event": "turn"') == 2, written[-2000:]
    assert "HTTP Request:" not in written and "AFC is enabled" not in written, "httpx and google-genai stay quiet"


@pytest.mark.slow
def test_two_replicas_sharing_firestore_serve_one_chat_in_turn(stand_in, firestore_emulator, tmp_path):
    """As deployed: two app processes, one database. A chat started on one goes on on the other
    after a reload there (a replica removed, or the cookie's replica gone), and both list it."""
    env = {"HYBRIDCHAT_VLLM_URL": stand_in, "HYBRIDCHAT_GEMINI_URL": stand_in, "GOOGLE_API_KEY": "local-stand-in",
           "HYBRIDCHAT_STORE_URL": f"firestore://chat-app-db?project={EMULATOR_PROJECT}",
           "FIRESTORE_EMULATOR_HOST": firestore_emulator.host, "HYBRIDCHAT_SESSION_SECRET": "one-secret-for-every-replica"}
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    with serving([sys.executable, "-m", "hybridchat.cli", "app", "--port", urls[0].rsplit(":", 1)[1]],
                 f"{urls[0]}/healthz", env=env), \
         serving([sys.executable, "-m", "hybridchat.cli", "app", "--port", urls[1].rsplit(":", 1)[1]],
                 f"{urls[1]}/healthz", env=env):
        with closing(Client(urls[0], verbose=False)) as first:
            _, _, browser, _ = say(first, "Started on the first replica", "gemma", {"visitor": None, "session": None})
        with closing(Client(urls[1], verbose=False)) as second:
            messages, _, again, sidebar = say(second, "Continued on the second", "gemini", browser)
    assert again == browser, "the second replica accepts the first one's visitor id and keeps the chat"
    assert texts(messages)[::2] == ["Started on the first replica", "Continued on the second"]
    assert models(messages)[0].startswith("Gemma") and models(messages)[1].startswith("Gemini")
    assert [choice[1] for choice in sidebar["choices"]] == [browser["session"]]
    saved = open_store(f"firestore://chat-app-db?project={EMULATOR_PROJECT}").load(browser["session"])
    assert [turn.model for turn in saved] == ["gemma", "gemini"], "one session in the database, both turns"
