"""The chat app in a real browser: Debian's chromium driven by Playwright, on 127.0.0.1."""

from __future__ import annotations

import itertools
import re
import time

import pytest
from conftest import api_key_client, running_app, wait_for
from iap_double import KEYS_PATH, IapKeys, proxy_app
from playwright.sync_api import Page, expect

from hybridchat.app import create_app
from hybridchat.backends import BackendHealth, VllmBackend, VllmClient
from hybridchat.backends.gemini import GeminiBackend
from hybridchat.config import Settings
from hybridchat.lab.local import BackgroundServer
from hybridchat.store import open_store

pytestmark = pytest.mark.slow  # Chromium

GEMINI = "Gemini 2.5 Flash (local stand-in)"


@pytest.fixture(scope="module")
def app_url(stand_in, tmp_path_factory):
    backends = {
        "gemma": VllmBackend(VllmClient(stand_in), label="Gemma"),
        "gemini": GeminiBackend(api_key_client(stand_in), label=GEMINI),
    }
    with running_app(tmp_path_factory.mktemp("browser"), backends) as (url, _):
        yield url


def bot_texts(page: Page) -> list[str]:
    return page.locator('#chat [data-testid="bot"]').all_inner_texts()


def send_and_watch(page: Page, message: str, replies_before: int) -> list[str]:
    """Send a message; return every distinct text the new reply showed while it streamed."""
    page.fill("#message textarea", message)
    page.press("#message textarea", "Enter")
    seen: list[str] = []
    changed = [time.monotonic()]

    def settled() -> bool:  # the reply has not changed for 2 s
        texts = bot_texts(page)
        current = texts[replies_before] if len(texts) > replies_before else ""
        if current and (not seen or current != seen[-1]):
            seen.append(current)
            changed.append(time.monotonic())
        return bool(seen) and time.monotonic() - changed[-1] > 2

    wait_for(settled, 60, every=0.03)
    return seen


def test_chat_switch_model_reload_and_resume(browser, app_url, tmp_path):
    context = browser.new_context()
    page = context.new_page()
    page.goto(app_url)
    page.wait_for_selector("#message textarea")

    shown = send_and_watch(page, "What is the capital of France?", 0)
    assert len(shown) > 1, "the reply should appear piece by piece"
    # Append-only, as far as Markdown lets it show: a second "~" turns earlier text into strikethrough.
    plain = ["".join(ch for ch in text if ch.isalnum()) for text in shown]
    assert all(later.startswith(earlier[:10]) for earlier, later in itertools.pairwise(plain)), shown

    page.click("#model input")
    page.get_by_role("option", name=GEMINI).click()
    send_and_watch(page, "And of Germany?", 1)
    assert len(bot_texts(page)) == 2

    page.reload()
    expect(page.locator('#chat [data-testid="bot"]')).to_have_count(2, timeout=30000)
    assert page.locator('#chat [data-testid="user"]').all_inner_texts() == ["What is the capital of France?", "And of Germany?"]
    session = page.locator("#sessions label")
    assert session.count() == 1 and "What is the capital of France?" in session.inner_text()

    page.click("text=New chat")
    expect(page.locator('#chat [data-testid="bot"]')).to_have_count(0, timeout=30000)
    session.first.click()
    expect(page.locator('#chat [data-testid="bot"]')).to_have_count(2, timeout=30000)
    page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
    assert (tmp_path / "chat.png").stat().st_size > 10_000

    # A second visitor (another browser profile) sees none of it.
    stranger = browser.new_context().new_page()
    stranger.goto(app_url)
    stranger.wait_for_selector("#message textarea")
    stranger.wait_for_timeout(1500)
    assert stranger.locator("#sessions label").count() == 0
    assert bot_texts(stranger) == []
    send_and_watch(stranger, "Hello from someone else", 0)
    assert stranger.locator("#sessions label").count() == 1
    page.reload()
    expect(page.locator('#chat [data-testid="bot"]')).to_have_count(2, timeout=30000)
    assert page.locator("#sessions label").count() == 1
    context.close()


def test_signed_in_with_google_the_same_chats_on_two_devices(browser, stand_in, tmp_path):
    """Behind IAP's double (Google sign-in, then IAP's signed assertion on every request): Alice
    chats on her laptop, opens the app on her phone and finds the chat there; Bob does not."""
    audience, keys = "/projects/123456789012/global/backendServices/77", IapKeys()
    backends = {"gemma": VllmBackend(VllmClient(stand_in), label="Gemma")}
    with BackgroundServer(proxy_app("http://127.0.0.1:9", keys, audience, set())) as key_set:
        settings = Settings(store_url=f"sqlite:///{tmp_path}/history.db", identity="iap",
                            iap_audience=audience, iap_keys_url=f"{key_set}{KEYS_PATH}")
        with BackgroundServer(create_app(settings, backends=backends)) as app_url, \
                BackgroundServer(proxy_app(app_url, keys, audience, {"alice@example.com", "bob@example.com"})) as gateway:

            def device(email: str) -> Page:
                page = browser.new_context().new_page()
                page.goto(f"{gateway}/_iap_double/sign_in?user={email}")  # Google's sign-in, then back to the app
                page.wait_for_selector("#message textarea")
                expect(page.locator("#signed-in")).to_contain_text(f"Signed in as {email}", timeout=30000)
                return page

            laptop = device("alice@example.com")
            send_and_watch(laptop, "Plan my week, from the laptop", 0)
            expect(laptop.locator("#sessions label")).to_have_count(1, timeout=30000)
            phone = device("alice@example.com")
            expect(phone.locator("#sessions label")).to_have_count(1, timeout=30000)
            assert "Plan my week, from the laptop" in phone.locator("#sessions label").inner_text()
            phone.locator("#sessions label").first.click()
            expect(phone.locator('#chat [data-testid="user"]')).to_have_text(["Plan my week, from the laptop"], timeout=30000)
            bob = device("bob@example.com")
            bob.wait_for_timeout(1500)
            assert bob.locator("#sessions label").count() == 0 and bot_texts(bob) == []


@pytest.mark.parametrize(
    "module, change, top, chat",
    [
        ("translators", ('else "model"', 'else "assistant"'),
         "process_message_gemma (my_app/translators.py, line 10): Gemma calls the assistant's turns model", None),
        ("callers", ('    return response.json()["choices"][0]["text"].strip()', "    return response.json()"),
         "✅", "call_gemma_model (my_app/callers.py, line 11) returned the whole JSON answer, not the reply's text"),
        ("callers", ("    response.raise_for_status()", '    response.raise_for_status()\n    return response.json()["text"]'),
         "✅", "call_gemma_model (my_app/callers.py, line 21) raised KeyError: 'text'. Read the answer where it is"),
        ("translators", ('    prompt = ""', '    prompt = "'),
         "Your code does not load: my_app/translators.py, line 12: SyntaxError", None),
    ],
    ids=["wrong-template", "whole-json", "raises", "syntax-error"],
)
def test_a_learners_mistake_shows_where_the_learner_looks_and_the_next_turn_answers(
    browser, stand_in, tmp_path, module, change, top, chat
):
    from test_learner import package  # the solutions, with one mistake a learner makes

    code = package(tmp_path / "my_app", **{module: change})
    with running_app(tmp_path, vllm_url=stand_in, gemini_url=stand_in, learner_code=str(code)) as (url, _):
        page = browser.new_context().new_page()
        page.goto(url)
        page.wait_for_selector("#message textarea")
        expect(page.locator("#learner-code")).to_contain_text(top, timeout=30000)
        selected = page.locator("#model input")
        if "does not load" in top:
            expect(selected).to_have_value(re.compile("· hybridchat"), timeout=30000)  # meanwhile, ours
            package(code)  # fixed; a reload of the page is enough
            page.reload()
            expect(page.locator("#learner-code")).to_contain_text("✅", timeout=30000)
        expect(selected).to_have_value("Gemma · your code", timeout=30000)
        replies = send_and_watch(page, "What is the capital of France?", 0)
        if chat:
            assert chat in replies[-1] and "Traceback" not in replies[-1], replies[-1]
        else:
            assert "⚠️" not in replies[-1], "the learner's code answered, as it is"
        selected.click()
        page.get_by_role("option", name=re.compile("Gemma · hybridchat")).click()
        replies = send_and_watch(page, "And of Germany?", 1)
        assert "Gemma · hybridchat" in replies[-1] and "⚠️" not in replies[-1], "the next turn, on hybridchat's path"


class SlowToCheck(VllmBackend):
    """A model whose health check takes seconds, as a model server that is down makes it."""

    def health(self) -> BackendHealth:
        time.sleep(3)
        return super().health()


def test_a_message_typed_as_soon_as_the_page_opens_is_not_hidden_when_loading_ends(browser, stand_in, tmp_path):
    backends = {"gemma": SlowToCheck(VllmClient(stand_in), label="Gemma")}
    with running_app(tmp_path, backends) as (url, _):
        page = browser.new_context().new_page()
        page.goto(url)
        # The box opens, focused, once the page has loaded (before, a quick typist's turn was sent
        # while it loaded, and loading then showed the chat as it had been: empty).
        expect(page.locator("#message textarea")).to_be_focused(timeout=30000)
        page.keyboard.type("What is the capital of France?")
        page.keyboard.press("Enter")
        expect(page.locator('#chat [data-testid="bot"]')).to_have_count(1, timeout=30000)
        page.wait_for_timeout(4000)  # past the page's own loading
        expect(page.locator('#chat [data-testid="user"]')).to_have_text(["What is the capital of France?"])
        expect(page.locator("#sessions label")).to_have_count(1)
        page.context.close()


def test_a_learners_slow_code_shows_the_message_at_once_a_live_line_and_stops(browser, stand_in, tmp_path):
    """The learner's caller answers whole, here after 10 s: meanwhile the chat shows the message and
    what is under way, no overlay covers the box or the sidebar, and Stop stops it."""
    from test_learner import package

    slow = ("    response = requests.post(", "    import time\n    time.sleep(10)\n    response = requests.post(")
    code = package(tmp_path / "my_app", callers=slow)
    with running_app(tmp_path, vllm_url=stand_in, gemini_url=stand_in, learner_code=str(code)) as (url, store_url):
        page = browser.new_context().new_page()
        page.goto(url)
        expect(page.locator("#model input")).to_have_value("Gemma · your code", timeout=30000)
        page.fill("#message textarea", "What is the capital of France?")
        page.press("#message textarea", "Enter")
        users, bots = page.locator('#chat [data-testid="user"]'), page.locator('#chat [data-testid="bot"]')
        expect(users).to_have_text(["What is the capital of France?"], timeout=2000)
        expect(bots.last).to_contain_text("your code is running", timeout=2000)
        expect(bots.last).to_contain_text(re.compile(r"your code is running \(([3-9]|\d\d) s\)"), timeout=6000)
        assert page.get_by_text(re.compile(r"processing")).count() == 0, "no overlay over the box or the sidebar"
        expect(bots.last).not_to_contain_text("your code is running", timeout=60000)
        assert "Gemma · your code" in bots.last.inner_text() and "⚠️" not in bots.last.inner_text()

        page.fill("#message textarea", "And of Germany?")
        page.press("#message textarea", "Enter")
        expect(bots.last).to_contain_text("your code is running", timeout=5000)
        page.locator("#stop").click()
        store = open_store(store_url)
        [session] = store.list_sessions(None)
        saved = wait_for(lambda: (turns := store.load(session.session_id)) and len(turns) == 2 and turns, 5,
                         every=0.1)
        assert [t.status for t in saved] == ["ok", "interrupted"], "stopped at once, saved as it came: nothing"
        shown = bots.last.inner_text()
        page.wait_for_timeout(2500)
        assert bots.last.inner_text() == shown, "nothing under way any more"
        store.close()
        page.context.close()
