"""The chat page, laid out and wired the way Gradio's own ``ChatInterface`` is: ``ChatUI``.

Visitors are told apart by an id the server issues and signs, kept in their browser
(``gr.BrowserState``, ``hybridchat.visitors``), by user name when login is on, or, signed in
with Google through IAP, by e-mail: the same person then has the same chats on every device
(``hybridchat.iap``). ``hybridchat.app.create_app`` serves it.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import gradio as gr
from gradio.blocks import Block

from hybridchat.backends import ChatBackend, GenerationParams, LearnerCode
from hybridchat.chat import AUTO, ChatService, Conversation, Progress
from hybridchat.chat_auto import AutoView, with_auto
from hybridchat.chat_export import DOWNLOAD_FILE_ID, ExportHandlers
from hybridchat.chat_feedback import FeedbackHandlers
from hybridchat.chat_pair import CHOSE_LEFT, PairView, side_by_side_choice
from hybridchat.chat_sessions import SIDEBAR_PAGE, SessionHandlers
from hybridchat.chat_view import PERSONA_ON_YOUR_PATH, RECHECK_SECONDS, UNAVAILABLE, chat_messages, model_choices
from hybridchat.errors import InputRefused, StoreError
from hybridchat.guard import SIGNED_IN
from hybridchat.iap import SIGN_OUT_PATH, IapVerifier
from hybridchat.limits import Limits
from hybridchat.sanitize import safe_markdown
from hybridchat.side_by_side import SIDE_BY_SIDE, PairProgress, open_pair, respond_pair, retry_pair
from hybridchat.visitors import VisitorIds

log = logging.getLogger(__name__)

VISITOR = "visitor:"  # the owner prefix of an anonymous visitor, whose id the app issued


Updates = dict[Block, Any]  # a handler's updates, by component; the others stay as they are
Ask = Callable[[Conversation], Iterator[Progress | PairProgress]]  # a turn's replies, its settings checked


class ChatUI(FeedbackHandlers, ExportHandlers, SessionHandlers):
    """The chat page, laid out and wired the way Gradio's own ``ChatInterface`` is: the
    ``_render_*`` methods place the components, ``_setup_events`` connects them to the handlers,
    and each handler returns its updates by component."""

    def __init__(
        self,
        service: ChatService,
        *,
        auth_enabled: bool,
        sign_in: IapVerifier | None = None,
        visitor_ids: VisitorIds,
        limits: Limits,
        stream_interval: float,
        learner: LearnerCode | None = None,
        same_model: bool = False,
    ):
        self.service = service
        self.learner = learner  # a learner's package, answering the models marked "your code"
        self.auth_enabled = auth_enabled
        self.sign_in = sign_in
        self.visitor_ids = visitor_ids
        self.limits = limits
        self.stream_interval = stream_interval
        self.pair = PairView(service.backends, same_model=same_model)  # both models side by side
        self.auto_view = AutoView(service.auto)
        with gr.Blocks(title="Hybrid chat: Gemma + Gemini") as self.demo:
            self._render_state()
            self._render_sidebar()
            self._render_chat()
            self._render_settings()
            self._setup_events()

    # --- layout ---------------------------------------------------------------------------

    def _render_state(self) -> None:
        self.browser = gr.BrowserState(
            {"visitor": None, "session": None}, storage_key="hybridchat", secret=self.visitor_ids.browser_storage_key()
        )
        self.conversation = gr.State(None)
        self.shown = gr.State(SIDEBAR_PAGE)  # how many chats the sidebar lists

    def _render_sidebar(self) -> None:
        with gr.Sidebar(label="Chats"):
            self.new_button = gr.Button("New chat", variant="primary")
            self.sessions = gr.Radio(label="Your chats", choices=[], elem_id="sessions")
            self.older_button = gr.Button("Older chats", size="sm", visible=False, elem_id="older")
            self.download_button = gr.Button("Download this chat", size="sm", elem_id="download")
            self.download_file = gr.DownloadButton(visible="hidden", elem_id=DOWNLOAD_FILE_ID)
            self.delete_button = gr.Button("Delete this chat", variant="stop", size="sm")

    def _render_chat(self) -> None:
        gr.Markdown("## Hybrid chat\nSwitch model at any turn: the conversation carries over.")
        self.signed_in = gr.Markdown(visible=False, elem_id="signed-in")
        self.learner_note = gr.Markdown(visible=False, elem_id="learner-code")
        labels = with_auto([(backend.label, name) for name, backend in self.service.backends.items()]
                           + side_by_side_choice(self.service.backends), self.service.auto)
        self.model = gr.Dropdown(label="Model", choices=labels, value=labels[0][1], elem_id="model")
        self.recheck = gr.Timer(RECHECK_SECONDS, active=False)
        self.chatbot = gr.Chatbot(label="Chat", height=480, buttons=["copy", "copy_all"], elem_id="chat",
                                  feedback_options=("Like", "Dislike"))
        self.pair.render_columns()
        self.auto_view.render()
        with gr.Row():
            # Closed until the page has loaded: loading ends by setting the chat and the visitor as
            # they were, which hid a turn sent meanwhile (loading takes seconds while a model is down).
            # The box takes the width; Send and Stop only what their words need, as in a chat app.
            self.box = gr.Textbox(
                placeholder="Message", show_label=False, scale=1, elem_id="message", autofocus=True, interactive=False
            )
            self.send_button = gr.Button("Send", variant="primary", scale=0, min_width=72, elem_id="send",
                                         interactive=False)
            self.stop_button = gr.Button("Stop", scale=0, min_width=72, elem_id="stop")

    def _render_settings(self) -> None:
        with gr.Accordion("Settings", open=False):
            self.temperature = gr.Slider(0.1, 1.0, value=0.9, step=0.05, label="Temperature")
            self.top_p = gr.Slider(0.1, 1.0, value=0.95, step=0.05, label="Top-p")
            first = next(iter(self.service.backends.values()))
            self.max_tokens = gr.Slider(1, 4096, value=first.default_max_tokens, step=1, label="Max tokens")
            self.persona = gr.Textbox(
                label="Persona (system prompt)", placeholder="e.g. You are a patient tutor.", lines=2,
                info=PERSONA_ON_YOUR_PATH if self.learner else None,
            )
            self.pair.render_settings()

    def _setup_events(self) -> None:
        chat_view = [self.chatbot, self.box, self.conversation, self.browser, self.sessions, *self.pair.outputs,
                     self.auto_view.ask_fallback]
        self.demo.load(
            self.start, [self.browser, self.shown],
            [self.browser, self.conversation, self.chatbot, self.sessions, self.older_button, self.model,
             self.signed_in, self.max_tokens, self.recheck, self.learner_note, self.box, self.send_button,
             *self.pair.outputs, self.auto_view.ask_fallback],
            api_visibility="private",
        )
        self.recheck.tick(self.recheck_models, None, [self.model, self.recheck], api_visibility="private",
                          show_progress="hidden")
        settings = [self.model, self.temperature, self.top_p, self.max_tokens, self.persona, self.browser, self.shown]
        inputs = [self.box, self.conversation, *settings, self.pair.setup]  # a State: not in the API
        sent: list[dict[str, Any]] = [  # Gradio's Dependency is a dict
            # No overlay over the box and the sidebar: the chat itself says what is under way.
            self.box.submit(self.chat, inputs, chat_view, api_name="chat", show_progress="hidden"),
            self.send_button.click(self.chat, inputs, chat_view, api_visibility="private", show_progress="hidden"),
            self.chatbot.retry(self.retry, [self.conversation, *settings, self.pair.setup], chat_view,
                               api_visibility="private", show_progress="hidden"),
            self.auto_view.ask_fallback.click(self.ask_fallback, [self.conversation, *settings[1:]], chat_view,
                                              api_visibility="private", show_progress="hidden"),
        ]
        for column, button in enumerate(self.pair.buttons):
            button.click(self._picker(column), [self.conversation, self.browser, self.pair.setup],
                         [self.conversation, self.chatbot, *self.pair.outputs], api_visibility="private")
        self.stop_button.click(None, cancels=sent)
        self.chatbot.like(self.vote, [self.conversation, self.browser], [self.conversation], api_visibility="private")
        self.sessions.input(
            self.open_session, [self.sessions, self.browser],
            [self.conversation, self.chatbot, self.browser, self.model, self.auto_view.ask_fallback],
            api_visibility="private",
        )
        for starts_over in (self.new_button.click, self.chatbot.clear):
            starts_over(
                self.new_chat, [self.browser],
                [self.conversation, self.chatbot, self.browser, self.sessions, self.auto_view.ask_fallback],
                api_visibility="private",
            )
        # Deleting stops the reply still streaming in this tab (a reply saved late is dropped).
        self.delete_button.click(
            self.delete_chat, [self.conversation, self.browser, self.shown],
            [self.conversation, self.chatbot, self.browser, self.sessions, self.older_button,
             self.auto_view.ask_fallback],
            cancels=sent, api_visibility="private",
        )
        self.download_button.click(self.download_chat, [self.conversation, self.browser], [self.download_file],
                                   api_visibility="private")
        self.older_button.click(
            self.show_older, [self.conversation, self.browser, self.shown],
            [self.shown, self.sessions, self.older_button], api_visibility="private",
        )

    # --- handlers (Gradio names each event after its handler: the API's names) -------------

    def start(self, browser: dict[str, Any] | None, shown: int, request: gr.Request) -> Updates:
        owner, browser = self._owner_of(browser, request)
        updates: Updates = {
            self.browser: browser, **self.recheck_models(),
            self.box: gr.Textbox(interactive=True), self.send_button: gr.Button(interactive=True),
        }
        if self.sign_in is not None:
            updates[self.signed_in] = gr.Markdown(
                f"Signed in as **{safe_markdown(owner)}** · [Sign out]({SIGN_OUT_PATH})", visible=True
            )
        if self.learner is not None:  # imported again if a file changed: a fixed file needs only a reload
            updates[self.learner_note] = gr.Markdown(self.learner.status(), visible=True)
        try:
            conversation = self._resume(owner, browser)
        except StoreError as exc:
            gr.Warning(f"Your chat cannot be loaded right now: {exc}")
            return updates | {self.conversation: None, self.chatbot: []}
        available = [name for label, name in updates[self.model].choices if UNAVAILABLE not in label]
        model = self._last_model(conversation, available)
        return updates | {
            self.conversation: conversation,
            self.chatbot: self._messages(conversation),
            self.model: gr.Dropdown(choices=updates[self.model].choices, value=model),
            self.max_tokens: self._backend_of(model).default_max_tokens,
            **self.pair.shown(conversation, None),
            **self.auto_view.shown(conversation),
            **self._sidebar(owner, conversation.session_id, shown),
        }

    def recheck_models(self) -> Updates:
        """The selector's entries as the models are now; rechecked while one is unavailable."""
        models = with_auto(model_choices(self.service.backends) + side_by_side_choice(self.service.backends),
                           self.service.auto)
        waiting = any(UNAVAILABLE in label for label, _ in models)
        return {self.model: gr.Dropdown(choices=models), self.recheck: gr.Timer(active=waiting)}

    def chat(
        self, message: str, conversation: Conversation | None, model: str, temperature: float, top_p: float,
        max_tokens: int, persona: str, browser: dict[str, Any] | None, shown: int, setup: dict[str, Any] | None,
        request: gr.Request,
    ) -> Iterator[Updates]:
        params = _params(temperature, top_p, max_tokens, persona)
        if params is None:
            yield {self.box: message}
            return
        if conversation is not None and open_pair(conversation):
            gr.Info(CHOSE_LEFT.format(label=self.pair.label_of(open_pair(conversation)[0], setup)))
        if model == SIDE_BY_SIDE and setup:
            names = (setup["left"], setup["right"])
            yield from self._turn(lambda chat: respond_pair(self.service, chat, message, names, params),
                                  message, conversation, browser, shown, request, setup)
            return
        yield from self._turn(
            lambda conversation: self.service.respond(conversation, message, model, params),
            message, conversation, browser, shown, request, setup,
        )

    def retry(
        self, conversation: Conversation | None, model: str, temperature: float, top_p: float, max_tokens: int,
        persona: str, browser: dict[str, Any] | None, shown: int, setup: dict[str, Any] | None,
        request: gr.Request,
    ) -> Iterator[Updates]:
        """Ask again for the last reply, or both of a pair (the earlier ones stay in the saved history)."""
        params = _params(temperature, top_p, max_tokens, persona)
        if params is None or conversation is None or not conversation.turns:
            yield self._unchanged()
            return
        paired = conversation.turns[-1].pair is not None
        yield from self._turn(
            (lambda chat: retry_pair(self.service, chat, params)) if paired
            else (lambda chat: self.service.retry(chat, model, params)), None, conversation, browser, shown,
            request, setup,
        )

    def ask_fallback(
        self, conversation: Conversation | None, temperature: float, top_p: float, max_tokens: int, persona: str,
        browser: dict[str, Any] | None, shown: int, request: gr.Request,
    ) -> Iterator[Updates]:
        """Ask Gemini for the reply Gemma broke off under Auto (the broken one stays saved)."""
        params = _params(temperature, top_p, max_tokens, persona)
        auto = self.service.auto
        if params is None or conversation is None or auto is None:
            yield self._unchanged()
            return
        yield from self._turn(lambda chat: auto.ask_fallback(self.service, chat, params), None, conversation,
                              browser, shown, request)

    def _turn(
        self, ask: Ask, message: str | None, conversation: Conversation | None, browser: dict[str, Any] | None,
        shown: int, request: gr.Request, setup: dict[str, Any] | None = None,
    ) -> Iterator[Updates]:
        """Stream the reply ``ask`` gives. ``message``: what goes back in the box when the turn
        cannot go (``None``: the box is left as it is)."""
        owner, browser = self._owner_of(browser, request)
        kept = {self.box: message} if message is not None else {}
        if conversation is None or conversation.owner != owner:
            try:
                conversation = self._resume(owner, browser)
            except StoreError as exc:
                # Not a new chat in its place: the message waits in the box until it can go on.
                gr.Warning(f"Your chat cannot be loaded right now, so the message was not sent: {exc}")
                yield kept | {self.conversation: None, self.browser: browser}
                return
        with ExitStack() as held:
            try:
                # A signed-in person is one person; behind the load balancer every address is its own.
                client = owner if self.sign_in is not None else request.client.host if request.client else None
                held.enter_context(self.limits.turn(owner, client, anonymous=owner.startswith(VISITOR)))
                progress = ask(conversation)
                first = next(progress)
            except InputRefused as exc:
                gr.Warning(str(exc))
                yield kept | {self.chatbot: self._messages(conversation), self.conversation: conversation,
                              self.browser: browser}
                return
            shown_at, began = None, time.monotonic()
            for update in itertools.chain([first], progress):
                if not (update.finished if isinstance(update, PairProgress) else update.turn is not None):
                    # The first piece at once, then at most one update per interval: Gradio re-sends
                    # the whole chat each time. Only the chat changes; the rest is sent at the end.
                    # The browser state and sidebar are given as they are, not left out: Gradio
                    # rebuilds a component for every one left out, a third of its time under load.
                    now = time.monotonic()
                    if not self.service.stream or (shown_at is not None and now - shown_at < self.stream_interval):
                        continue
                    shown_at = now
                    yield {self.chatbot: self._messages(conversation, update, began), self.box: "",
                           self.browser: browser, self.sessions: conversation.session_id,
                           **(self.pair.shown(conversation, setup, update) if isinstance(update, PairProgress) else {})}
                    continue
                if isinstance(update, Progress) and update.notice:
                    gr.Warning(update.notice)
                browser["session"] = conversation.session_id
                yield {
                    self.chatbot: self._messages(conversation),
                    self.box: "",
                    self.conversation: conversation,
                    self.browser: browser,
                    self.sessions: self._sidebar(owner, conversation.session_id, shown, older=False).get(
                        self.sessions, gr.skip()
                    ),
                    **self.pair.shown(conversation, setup),
                    **self.auto_view.shown(conversation),
                }

    # --- helpers --------------------------------------------------------------------------

    def _owner_of(self, browser: dict[str, Any] | None, request: gr.Request) -> tuple[str, dict[str, Any]]:
        browser = dict(browser) if isinstance(browser, dict) else {}  # whatever the client sent
        if self.sign_in is not None:
            # Who Guard found in IAP's signed assertion (never the unsigned e-mail header).
            return str(getattr(request.state, SIGNED_IN).email), browser
        if self.auth_enabled and request.username:
            return f"user:{request.username}", browser
        visitor = self.visitor_ids.verify(browser.get("visitor"))
        if visitor is None:  # a new browser, or an id this server did not issue
            visitor = self.visitor_ids.new_id()
            browser = {"visitor": self.visitor_ids.token_for(visitor), "session": None}
        return f"{VISITOR}{visitor}", browser

    def _last_model(self, conversation: Conversation, available: list[str] | None = None) -> str:
        """The model of the chat's last turn, where it is still offered; else the first one
        ``available`` (a learner's code that does not load leaves hybridchat's path), else the first."""
        last = conversation.turns[-1] if conversation.turns else None
        offered = available or [SIDE_BY_SIDE, AUTO, *self.service.backends]
        if last is not None and last.pair is not None and SIDE_BY_SIDE in offered:
            return SIDE_BY_SIDE
        if last is not None and last.auto and self.service.auto is not None:
            return AUTO
        model = last.model if last else None
        return model if model in self.service.backends else next(iter(available or self.service.backends))

    def _backend_of(self, model: str) -> ChatBackend:
        """The model an entry of the selector asks first."""
        if model == AUTO and self.service.auto is not None:
            return self.service.auto.first
        return self.service.backends.get(model) or next(iter(self.service.backends.values()))

    def _unchanged(self) -> Updates:
        # One output left as it is (Gradio leaves the others so too; an empty dict is an error).
        return {self.conversation: gr.skip()}

    def _messages(
        self, conversation: Conversation, pending: Progress | PairProgress | None = None, began: float = 0.0
    ) -> list[Any]:
        return chat_messages(conversation.turns, self.service.backends, pending, began)


def _params(temperature: float, top_p: float, max_tokens: int, persona: str) -> GenerationParams | None:
    """The page's settings for one turn, checked once as they arrive; ``None`` after saying
    which one is wrong (a client of the API can send any value)."""
    try:
        return GenerationParams.checked(
            temperature=temperature, top_p=top_p, max_tokens=max_tokens, system_prompt=persona
        )
    except InputRefused as exc:
        gr.Warning(str(exc))
        return None
