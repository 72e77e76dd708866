"""Sign-in with Google through IAP: the assertion checked with google-auth against a key set
served on 127.0.0.1 (an ES256 key made here), the app refusing whatever IAP did not sign, and
one person's chats on two devices through a double of IAP in front of the app."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from iap_double import KEYS_PATH, IapKeys, proxy_app
from test_reliability import visitor

from bench.queue_client import QueueClient
from bench.servers import Pace, app_server, paced_server
from hybridchat.config import Settings
from hybridchat.errors import SignInRefused
from hybridchat.iap import ASSERTION_HEADER, IapVerifier
from hybridchat.lab.local import BackgroundServer

AUDIENCE = "/projects/123456789012/global/backendServices/4242424242"


@pytest.fixture(scope="module")
def keys() -> IapKeys:
    return IapKeys()


@pytest.fixture(scope="module")
def key_set(keys):
    """IAP's key set as Google publishes it, from 127.0.0.1."""
    with BackgroundServer(proxy_app("http://127.0.0.1:9", keys, AUDIENCE, set())) as url:
        yield f"{url}{KEYS_PATH}"


def refused(verifier: IapVerifier, assertion: str | None) -> str:
    with pytest.raises(SignInRefused) as caught:
        verifier.user(assertion)
    return str(caught.value)


def test_a_valid_assertion_names_the_person(keys, key_set):
    user = IapVerifier(AUDIENCE, key_set).user(keys.assertion("Alice@Example.com", AUDIENCE))
    assert user.email == "alice@example.com" and user.subject.startswith("accounts.google.com:")


@pytest.mark.parametrize(("case", "why"), [
    ("expired", "expired"),
    ("wrong audience", "meant for another app"),
    ("missing", "through Google sign-in"),
    ("empty", "through Google sign-in"),
    ("another key, same key id", "signature does not check out"),
    ("a key IAP does not publish", "a key IAP does not publish"),
    ("issued in an hour", "issued in the future"),
    ("not IAP's issuer", "not IAP's"),
    ("no e-mail", "not IAP's"),
    ("unsigned (alg none)", "not signed the way IAP signs"),
    ("not a JWT", "not a JWT"),
])
def test_whatever_iap_did_not_sign_is_refused(keys, key_set, case, why):
    now = time.time()
    forger = IapKeys(key_id=keys.key_id)
    unsigned = keys.assertion("alice@example.com", AUDIENCE).rpartition(".")[0].split(".")
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": keys.key_id}).encode()).decode().rstrip("=")
    assertion = {
        "expired": keys.assertion("alice@example.com", AUDIENCE, issued=now - 3600, lifetime=600),
        "wrong audience": keys.assertion("alice@example.com", "/projects/123456789012/global/backendServices/1"),
        "missing": None,
        "empty": "",
        "another key, same key id": forger.assertion("alice@example.com", AUDIENCE),
        "a key IAP does not publish": IapKeys().assertion("alice@example.com", AUDIENCE),
        "issued in an hour": keys.assertion("alice@example.com", AUDIENCE, issued=now + 3600),
        "not IAP's issuer": keys.assertion("alice@example.com", AUDIENCE, issuer="https://accounts.google.com"),
        "no e-mail": keys.assertion("", AUDIENCE),
        "unsigned (alg none)": f"{header}.{unsigned[1]}.",
        "not a JWT": "accounts.google.com:alice@example.com",
    }[case]
    assert why in refused(IapVerifier(AUDIENCE, key_set), assertion)


def test_keys_are_kept_refetched_for_a_new_key_id_at_most_once_a_minute_and_kept_when_google_is_down(keys):
    now, fetched, down = [1000.0], [], [False]
    rotated = IapKeys()

    def fetch(url: str) -> dict[str, str]:
        if down[0]:
            raise httpx.ConnectError("unreachable")
        fetched.append(now[0])
        return {**keys.public_keys(), **(rotated.public_keys() if now[0] > 1100 else {})}

    verifier = IapVerifier(AUDIENCE, "http://keys", clock=lambda: now[0], fetch=fetch)
    for _ in range(3):
        verifier.user(keys.assertion("alice@example.com", AUDIENCE))
    assert len(fetched) == 1, "the key set is read once, not per request"
    for _ in range(3):  # a made-up key id must not make the app fetch on every request
        refused(verifier, IapKeys().assertion("mallory@example.com", AUDIENCE))
    now[0] = 1200.0  # IAP published a new key
    assert verifier.user(rotated.assertion("bob@example.com", AUDIENCE)).email == "bob@example.com"
    assert len(fetched) == 2
    down[0], now[0] = True, 1000.0 + 3 * 3600
    assert verifier.user(keys.assertion("alice@example.com", AUDIENCE)).email == "alice@example.com", \
        "the keys read before are kept while Google's key URL is unreachable"
    cold = IapVerifier(AUDIENCE, "http://keys", fetch=fetch)
    with pytest.raises(SignInRefused) as caught:
        cold.user(keys.assertion("alice@example.com", AUDIENCE))
    assert caught.value.status == 503 and "cannot be checked right now" in str(caught.value)


def test_without_an_audience_nobody_is_let_in():
    with pytest.raises(SignInRefused) as caught:
        IapVerifier(None).user("anything")
    assert caught.value.status == 503 and "HYBRIDCHAT_IAP_AUDIENCE" in str(caught.value)


def test_settings_say_which_identity_is_in_force():
    assert Settings(identity="iap").identity_source.startswith("Google sign-in through IAP")
    assert Settings(auth="a:b").identity_source.startswith("shared-password login")
    assert Settings().identity_source.startswith("anonymous visitor ids")


# --- the app itself, with sign-in through IAP required


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('iap')}/history.db"


@pytest.fixture(scope="module")
def signed_in_app(store_url, key_set):
    env = {"HYBRIDCHAT_IDENTITY": "iap", "HYBRIDCHAT_IAP_AUDIENCE": AUDIENCE, "HYBRIDCHAT_IAP_KEYS_URL": key_set}
    with paced_server(Pace(ttft=0.0, tokens=5, gap=0.0)) as (vllm, _), app_server(vllm, store_url, env=env) as (url, _):
        yield url


def turn(url: str, message: str, browser: dict[str, Any], headers: dict[str, str] | None = None,
         cookies: dict[str, str] | None = None, api_name: str = "chat", data: list[Any] | None = None,
         tab: str | None = None, model: str = "gemma"):
    """One event through the queue API; ``tab`` is the browser tab (Gradio's session hash)."""
    async def call():
        async with httpx.AsyncClient(timeout=60, headers=headers, cookies=cookies) as http:
            client = QueueClient(url, http)
            if api_name == "chat":
                return await client.turn(message, browser, max_tokens=4, session_hash=tab, model=model)
            return await client.call(api_name, data or [], session_hash=tab)

    return asyncio.run(call())


@pytest.mark.parametrize("path", ["/", "/config", "/gradio_api/info"])
def test_the_app_refuses_requests_iap_did_not_sign(signed_in_app, keys, path):
    forged = {"x-goog-authenticated-user-email": "accounts.google.com:alice@example.com",
              "x-goog-authenticated-user-id": "accounts.google.com:1"}
    other_app = {ASSERTION_HEADER: keys.assertion("alice@example.com", "/projects/1/global/backendServices/2")}
    for headers in ({}, forged, other_app):
        answer = httpx.get(f"{signed_in_app}{path}", headers=headers)
        assert answer.status_code == 403, (headers, answer.text)
        assert "sign-in" in answer.json()["detail"].lower()
    assert httpx.get(f"{signed_in_app}/healthz").status_code == 200, "health checks do not pass through IAP"
    posted = httpx.post(f"{signed_in_app}/gradio_api/queue/join", headers=forged, json={"data": [], "fn_index": 0})
    assert posted.status_code == 403


def test_a_signed_in_person_chats_under_their_email(signed_in_app, keys, tmp_path):
    alice = {ASSERTION_HEADER: keys.assertion("alice@example.com", AUDIENCE)}
    reply = turn(signed_in_app, "hello from Alice", visitor(), headers=alice)
    assert reply.ok and reply.last_reply, reply
    assert reply.browser.get("visitor") is None, "no anonymous id is issued to a signed-in person"
    page = turn(signed_in_app, "", {}, headers=alice, api_name="start", data=[{"visitor": None, "session": None}, None])
    assert "Signed in as **alice@example.com**" in page.outputs[6]["value"]
    assert reply.browser["session"] in [c[1] for c in page.outputs[3]["choices"]], "her chat is in her sidebar"


def test_one_person_has_the_same_chats_on_every_device_through_iap(signed_in_app, keys, store_url):
    members = {"alice@example.com", "bob@example.com"}
    with BackgroundServer(proxy_app(signed_in_app, keys, AUDIENCE, members)) as gateway:
        assert httpx.get(gateway).status_code == 302, "IAP sends a visitor who is not signed in to Google"

        def device(email: str) -> dict[str, str]:
            """A browser signed in as ``email`` (its IAP cookie)."""
            return dict(httpx.get(f"{gateway}/_iap_double/sign_in", params={"user": email}).cookies)

        assert httpx.get(gateway, cookies=device("carol@example.com")).status_code == 403, "not a member"
        laptop, phone, bobs = device("alice@example.com"), device("alice@example.com"), device("bob@example.com")
        first = turn(gateway, "from my laptop", visitor(), cookies=laptop)
        chat_id = first.browser["session"]
        opened = turn(gateway, "", {}, cookies=phone, api_name="start", data=[visitor(), None], tab="phone")
        assert chat_id in [c[1] for c in opened.outputs[3]["choices"]], "the phone lists the laptop's chat"
        shown = turn(gateway, "", {}, cookies=phone, api_name="open_session", data=[chat_id, visitor()], tab="phone")
        assert shown.ok, shown
        assert "from my laptop" in json.dumps(shown.outputs[1])
        later = turn(gateway, "and from my phone", {"visitor": None, "session": chat_id}, cookies=phone)
        assert later.browser["session"] == chat_id, "the phone goes on with the same chat"
        # Bob, signed in, even sending an assertion for Alice that he made: IAP drops it.
        forged = {ASSERTION_HEADER: IapKeys(key_id=keys.key_id).assertion("alice@example.com", AUDIENCE),
                  "x-goog-authenticated-user-email": "accounts.google.com:alice@example.com"}
        bob = turn(gateway, "", {}, headers=forged, cookies=bobs, api_name="start", data=[visitor(), None], tab="bob")
        assert chat_id not in json.dumps(bob.outputs[3]), "Bob does not see Alice's chats"
        stolen = turn(gateway, "what did I say?", {"visitor": None, "session": chat_id}, headers=forged, cookies=bobs)
        assert stolen.ok and stolen.browser["session"] != chat_id, "Bob's turn starts his own chat"
        assert "from my laptop" not in json.dumps(stolen.outputs)
    listed = subprocess.run([sys.executable, "-m", "hybridchat.cli", "sessions", "list", "--user", "alice@example.com"],
                            env={"PATH": "", "HYBRIDCHAT_STORE_URL": store_url},  # piped: 80 columns
                            capture_output=True, text=True, check=True).stdout
    assert chat_id in listed and "alice@example.com" in listed, "the whole id, to paste into `sessions show`"


def test_doctor_shows_the_identity_source_and_checks_iaps_keys(key_set):
    def doctor(**env: str) -> str:
        run = subprocess.run([sys.executable, "-m", "hybridchat.cli", "doctor"], capture_output=True, text=True,
                             env={"PATH": "", "COLUMNS": "250", "HYBRIDCHAT_BACKENDS": "gemma", **env})
        return run.stdout
    assert "anonymous visitor ids, signed by the app" in doctor()
    signed = doctor(HYBRIDCHAT_IDENTITY="iap", HYBRIDCHAT_IAP_AUDIENCE=AUDIENCE, HYBRIDCHAT_IAP_KEYS_URL=key_set)
    assert "Google sign-in through IAP" in signed and f"audience {AUDIENCE}; 1 IAP key(s)" in signed, signed
    assert "not set up" in doctor(HYBRIDCHAT_IDENTITY="iap")


def test_signed_in_people_behind_one_address_are_not_one_client(keys, key_set, tmp_path):
    """Behind the load balancer every request comes from Google's front ends: the per-address
    share counts per signed-in person, so two people stream at once where one address is allowed one."""
    env = {"HYBRIDCHAT_IDENTITY": "iap", "HYBRIDCHAT_IAP_AUDIENCE": AUDIENCE, "HYBRIDCHAT_IAP_KEYS_URL": key_set,
           "HYBRIDCHAT_STREAMS_PER_CLIENT": "1"}
    with paced_server(Pace(ttft=0.0, tokens=20, gap=0.05)) as (vllm, _), \
            app_server(vllm, f"sqlite:///{tmp_path}/h.db", env=env) as (url, _):

        async def both():
            async def one(email: str):
                async with httpx.AsyncClient(timeout=60, headers={ASSERTION_HEADER: keys.assertion(email, AUDIENCE)}) as http:
                    return await QueueClient(url, http).turn(f"hello from {email}", visitor(), max_tokens=20)
            return await asyncio.gather(one("alice@example.com"), one("bob@example.com"))

        replies = asyncio.run(both())
    assert all(r.ok and r.last_reply and not r.warnings for r in replies), replies


def test_a_password_list_and_iap_together_are_refused(tmp_path):
    from hybridchat.app import create_app
    from hybridchat.errors import HybridChatError

    with pytest.raises(HybridChatError, match="choose one"):
        create_app(Settings(identity="iap", store_url=f"sqlite:///{tmp_path}/h.db"), auth=[("a", "b")])
