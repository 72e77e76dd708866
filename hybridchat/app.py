"""The Gradio chat app: streaming replies, a model switch per turn, saved sessions per visitor.

``create_app(settings)`` returns a FastAPI app (Gradio mounted at ``/``, ``/healthz`` for
Kubernetes probes); ``hybridchat app`` serves it. Visitors are told apart by an id the server
issues and signs, kept in their browser (``gr.BrowserState``, ``hybridchat.visitors``), by
user name when login is on, or, signed in with Google through IAP, by e-mail: the same person
then has the same chats on every device (``hybridchat.iap``).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, asynccontextmanager
from typing import Any

import gradio as gr
from fastapi import FastAPI

from hybridchat.backends import ChatBackend, GenerationParams, build_backends
from hybridchat.chat import ChatService, Conversation, Progress
from hybridchat.config import Settings
from hybridchat.errors import HybridChatError, InputRefused, SessionNotFound, StoreError
from hybridchat.guard import HEALTH_PATH, SIGNED_IN, Guard
from hybridchat.iap import SIGN_OUT_PATH, IapVerifier
from hybridchat.limits import Limits
from hybridchat.login import Logins
from hybridchat.sanitize import safe_markdown
from hybridchat.store import HistoryStore, Turn, open_store
from hybridchat.visitors import VisitorIds, session_secret

log = logging.getLogger(__name__)

_CSS = "footer {display: none !important}"
SIDEBAR_PAGE = 50  # chats the sidebar lists at first, and more each time "Older chats" is pressed


def model_choices(backends: dict[str, ChatBackend]) -> list[tuple[str, str]]:
    """Selector entries, checked in parallel: an unreachable model stays listed, with why."""
    with ThreadPoolExecutor(max_workers=len(backends)) as pool:
        health = dict(zip(backends, pool.map(lambda b: b.health(), backends.values())))
    return [
        (backend.label if health[name].ok else f"{backend.label} — unavailable: {health[name].detail}", name)
        for name, backend in backends.items()
    ]


_MARKS = {"interrupted": "*(interrupted)*", "cut_off": "*(stopped at the max-tokens limit)*"}


def to_messages(turns: list[Turn], pending: Progress | None = None) -> list[dict[str, str]]:
    """The chat display of saved turns, plus a turn still streaming."""
    messages: list[dict[str, str]] = []
    for turn in turns:
        messages += _shown(turn.user, turn.reply, turn.notice, _MARKS.get(turn.status), turn.error)
    if pending is not None:
        messages += _shown(pending.message, pending.reply, pending.context_note)
    return messages


def _shown(message: str, reply: str, note: str | None = None, mark: str | None = None, error: str | None = None) -> list[dict[str, str]]:
    # Every text shown goes through safe_markdown: replies and servers' error texts are not ours.
    parts = [f"ℹ️ *{note}*" if note else "", safe_markdown(reply), mark or "", f"⚠️ {safe_markdown(error)}" if error else ""]
    return [
        {"role": "user", "content": safe_markdown(message)},
        {"role": "assistant", "content": "\n\n".join(p for p in parts if p)},
    ]


def build_ui(
    service: ChatService,
    *,
    auth_enabled: bool,
    sign_in: IapVerifier | None = None,
    visitor_ids: VisitorIds,
    limits: Limits,
    stream_interval: float,
) -> gr.Blocks:
    def owner_of(browser: dict[str, Any] | None, request: gr.Request) -> tuple[str, dict[str, Any]]:
        browser = dict(browser) if isinstance(browser, dict) else {}  # whatever the client sent
        if sign_in is not None:
            # Who Guard found in IAP's signed assertion (never the unsigned e-mail header).
            return getattr(request.state, SIGNED_IN).email, browser
        if auth_enabled and request.username:
            return f"user:{request.username}", browser
        visitor = visitor_ids.verify(browser.get("visitor"))
        if visitor is None:  # a new browser, or an id this server did not issue
            visitor = visitor_ids.new_id()
            browser = {"visitor": visitor_ids.token_for(visitor), "session": None}
        return f"visitor:{visitor}", browser

    def sidebar(owner: str, selected: str | None, shown: int) -> tuple[gr.Radio, gr.Button]:
        """The sidebar's newest ``shown`` entries, (title · date, session id), and the button
        that shows older ones, if there are; left as they are while the store cannot list them
        (the turn or page load has said why)."""
        try:
            sessions = service.store.list_sessions(owner, limit=shown + 1)
        except HybridChatError as exc:
            log.debug("sessions not listed: %s", exc)
            return gr.skip(), gr.skip()
        choices = [(f"{s.title or 'Untitled'} · {s.updated_at:%b %d %H:%M}" if s.updated_at else s.title, s.session_id)
                   for s in sessions[:shown]]
        return gr.Radio(choices=choices, value=selected), gr.Button(visible=len(sessions) > shown)

    def resume(owner: str, browser: dict[str, Any]) -> Conversation:
        """The session this browser was in, if it is still there and its own; ``StoreError``
        while the store cannot say (the browser keeps its session for later)."""
        if browser.get("session"):
            try:
                return service.open(owner, browser["session"])
            except SessionNotFound:
                browser["session"] = None
        return Conversation(owner)

    def start(browser: dict[str, Any] | None, shown: int, request: gr.Request):  # type: ignore[no-untyped-def]
        owner, browser = owner_of(browser, request)
        models = model_choices(service.backends)
        choices = gr.Dropdown(choices=models, value=models[0][1])
        who = (gr.Markdown(f"Signed in as **{safe_markdown(owner)}** · [Sign out]({SIGN_OUT_PATH})", visible=True)
               if sign_in is not None else gr.skip())
        try:
            conversation = resume(owner, browser)
        except StoreError as exc:
            gr.Warning(f"Your chat cannot be loaded right now: {exc}")
            return browser, None, [], gr.skip(), gr.skip(), choices, who
        return browser, conversation, to_messages(conversation.turns), *sidebar(owner, conversation.session_id, shown), choices, who

    def chat(message, conversation, model, temperature, top_p, max_tokens, persona, browser, shown, request: gr.Request):  # type: ignore[no-untyped-def]
        def ask(conversation: Conversation, params: GenerationParams) -> Iterator[Progress]:
            return service.respond(conversation, message, model, params)

        yield from turn(ask, message, conversation, temperature, top_p, max_tokens, persona, browser, shown, request)

    def retry(conversation, model, temperature, top_p, max_tokens, persona, browser, shown, request: gr.Request):  # type: ignore[no-untyped-def]
        """Ask again for the last reply (the earlier attempt stays in the saved history)."""
        if conversation is None or not conversation.turns:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return

        def ask(conversation: Conversation, params: GenerationParams) -> Iterator[Progress]:
            return service.retry(conversation, model, params)

        yield from turn(ask, gr.skip(), conversation, temperature, top_p, max_tokens, persona, browser, shown, request)

    def turn(ask, message, conversation, temperature, top_p, max_tokens, persona, browser, shown, request: gr.Request):  # type: ignore[no-untyped-def]
        """Stream the reply ``ask`` gives; ``message``: what the box holds if the turn cannot go."""
        owner, browser = owner_of(browser, request)
        if conversation is None or conversation.owner != owner:
            try:
                conversation = resume(owner, browser)
            except StoreError as exc:
                # Not a new chat in its place: the message waits in the box until it can go on.
                gr.Warning(f"Your chat cannot be loaded right now, so the message was not sent: {exc}")
                yield gr.skip(), message, None, browser, gr.skip()
                return
        with ExitStack() as held:
            try:
                params = GenerationParams.checked(
                    temperature=temperature, top_p=top_p, max_tokens=max_tokens, system_prompt=persona
                )
                # A signed-in person is one person; behind the load balancer every address is its own.
                client = owner if sign_in is not None else request.client.host if request.client else None
                held.enter_context(limits.turn(owner, client))
                progress = ask(conversation, params)
                first = next(progress)
            except InputRefused as exc:
                gr.Warning(str(exc))
                yield to_messages(conversation.turns), message, conversation, browser, gr.Radio()
                return
            shown_at = None
            for update in itertools.chain([first], progress):
                if update.turn is None:
                    # The first piece at once, then at most one update per interval: Gradio re-sends
                    # the whole chat each time. Only the chat changes; the rest is sent at the end.
                    # The browser state and sidebar are given as they are, not gr.skip(): Gradio
                    # rebuilds a component for every skip, a third of its time under load.
                    now = time.monotonic()
                    if not service.stream or (shown_at is not None and now - shown_at < stream_interval):
                        continue
                    shown_at = now
                    messages = to_messages(conversation.turns, update)
                    yield messages, "", gr.skip(), browser, conversation.session_id
                    continue
                if update.notice:
                    gr.Warning(update.notice)
                browser["session"] = conversation.session_id
                yield (
                    to_messages(conversation.turns),
                    "",
                    conversation,
                    browser,
                    sidebar(owner, conversation.session_id, shown)[0],
                )

    def open_session(session_id, browser, request: gr.Request):  # type: ignore[no-untyped-def]
        owner, browser = owner_of(browser, request)
        if not session_id:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            conversation = service.open(owner, session_id)
        except HybridChatError as exc:
            gr.Warning(str(exc))
            return gr.skip(), gr.skip(), gr.skip()
        browser["session"] = session_id
        return conversation, to_messages(conversation.turns), browser

    def new_chat(browser, request: gr.Request):  # type: ignore[no-untyped-def]
        owner, browser = owner_of(browser, request)
        browser["session"] = None
        return Conversation(owner), [], browser, gr.Radio(value=None)

    def delete_chat(conversation, browser, shown, request: gr.Request):  # type: ignore[no-untyped-def]
        owner, browser = owner_of(browser, request)
        if conversation is not None and conversation.session_id:
            try:
                service.delete(owner, conversation.session_id)
            except HybridChatError as exc:
                gr.Warning(str(exc))
        browser["session"] = None
        return Conversation(owner), [], browser, *sidebar(owner, None, shown)

    def show_older(conversation, browser, shown, request: gr.Request):  # type: ignore[no-untyped-def]
        owner, browser = owner_of(browser, request)
        shown += SIDEBAR_PAGE
        return shown, *sidebar(owner, conversation.session_id if conversation else None, shown)

    with gr.Blocks(title="Hybrid chat: Gemma + Gemini") as demo:
        browser = gr.BrowserState(
            {"visitor": None, "session": None}, storage_key="hybridchat", secret=visitor_ids.browser_storage_key()
        )
        conversation = gr.State(None)
        shown = gr.State(SIDEBAR_PAGE)  # how many chats the sidebar lists
        with gr.Sidebar(label="Chats"):
            new_button = gr.Button("New chat", variant="primary")
            sessions = gr.Radio(label="Your chats", choices=[], elem_id="sessions")
            older_button = gr.Button("Older chats", size="sm", visible=False, elem_id="older")
            delete_button = gr.Button("Delete this chat", variant="stop", size="sm")
        gr.Markdown("## Hybrid chat\nSwitch model at any turn: the conversation carries over.")
        signed_in = gr.Markdown(visible=False, elem_id="signed-in")
        labels = [(backend.label, name) for name, backend in service.backends.items()]
        model = gr.Dropdown(label="Model", choices=labels, value=labels[0][1], elem_id="model")
        chatbot = gr.Chatbot(label="Chat", height=480, buttons=["copy", "copy_all"], elem_id="chat")
        with gr.Row():
            box = gr.Textbox(placeholder="Message", show_label=False, scale=8, elem_id="message", autofocus=True)
            send_button = gr.Button("Send", variant="primary", scale=1, elem_id="send")
            stop_button = gr.Button("Stop", scale=1, elem_id="stop")
        with gr.Accordion("Settings", open=False):
            temperature = gr.Slider(0.1, 1.0, value=0.9, step=0.05, label="Temperature")
            top_p = gr.Slider(0.1, 1.0, value=0.95, step=0.05, label="Top-p")
            max_tokens = gr.Slider(1, 4096, value=1024, step=1, label="Max tokens")
            persona = gr.Textbox(label="Persona (system prompt)", placeholder="e.g. You are a patient tutor.", lines=2)

        demo.load(
            start, [browser, shown], [browser, conversation, chatbot, sessions, older_button, model, signed_in],
            api_visibility="private",
        )
        inputs = [box, conversation, model, temperature, top_p, max_tokens, persona, browser, shown]
        outputs = [chatbot, box, conversation, browser, sessions]
        sent = [
            box.submit(chat, inputs, outputs, api_name="chat"),
            send_button.click(chat, inputs, outputs, api_visibility="private"),
        ]
        sent.append(chatbot.retry(retry, inputs[1:], outputs, api_visibility="private"))
        stop_button.click(None, cancels=sent)
        sessions.input(open_session, [sessions, browser], [conversation, chatbot, browser], api_visibility="private")
        for starts_over in (new_button.click, chatbot.clear):
            starts_over(new_chat, [browser], [conversation, chatbot, browser, sessions], api_visibility="private")
        # Deleting stops the reply still streaming in this tab (a reply saved late is dropped).
        delete_button.click(
            delete_chat, [conversation, browser, shown], [conversation, chatbot, browser, sessions, older_button],
            cancels=sent, api_visibility="private",
        )
        older_button.click(
            show_older, [conversation, browser, shown], [shown, sessions, older_button], api_visibility="private"
        )
    return demo


def create_app(
    settings: Settings | None = None,
    *,
    backends: dict[str, ChatBackend] | None = None,
    store: HistoryStore | None = None,
    auth: list[tuple[str, str]] | None = None,
    root_path: str | None = None,
) -> FastAPI:
    """The app as ASGI: the chat UI at ``/`` and ``/healthz`` for probes.

    ``backends`` and ``store`` replace the ones ``settings`` describe."""
    settings = settings or Settings()
    visitor_ids = VisitorIds(session_secret(settings))  # first: a missing secret stops it early
    sign_in = None
    if settings.identity == "iap":
        if auth:
            raise HybridChatError(
                "Both a password list (HYBRIDCHAT_AUTH or --auth-file) and sign-in through IAP "
                "(HYBRIDCHAT_IDENTITY=iap) are set: they are two ways to say who a visitor is, choose one."
            )
        sign_in = IapVerifier(settings.iap_audience, settings.iap_keys_url)
    owned_store = None if store else open_store(settings.resolved_store_url)
    service = ChatService(
        backends or build_backends(settings),
        store or owned_store,
        max_message_bytes=settings.max_message_bytes,
        max_persona_bytes=settings.max_persona_bytes,
        stream=settings.stream,
    )
    demo = build_ui(
        service,
        auth_enabled=bool(auth),
        sign_in=sign_in,
        visitor_ids=visitor_ids,
        limits=Limits(turns_per_minute=settings.turns_per_minute, streams_per_client=settings.streams_per_client),
        stream_interval=settings.stream_interval,
    )
    # Each streaming chat holds a worker thread; Gradio's pool (and its queue's slots) default
    # to 40, below the concurrency asked for, and only launch() can raise it: set it here.
    demo.max_threads = max(40, 2 * settings.concurrency)
    demo.queue(default_concurrency_limit=settings.concurrency)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if owned_store is not None:
            owned_store.close()  # a last try to save turns still waiting for the database

    app = FastAPI(lifespan=lifespan)

    @app.get(HEALTH_PATH)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # show_error=False: an unexpected exception shows "Error", not its text (gr.Error and
    # gr.Warning, worded for visitors, still show); the traceback goes to the log.
    # run_history=False: Gradio would keep every message and reply in the browser's storage.
    app = gr.mount_gradio_app(
        app, demo, path="/", auth=Logins(auth) if auth else None, root_path=root_path, css=_CSS,
        show_error=False, run_history=False,
    )
    app.add_middleware(Guard, max_body_bytes=settings.max_request_bytes, sign_in=sign_in)
    return app
