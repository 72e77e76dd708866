"""The chat page's sidebar of saved chats: open one, start a new one, delete one, list older
ones. ``ChatUI`` takes these handlers from ``SessionHandlers``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gradio as gr
from gradio.blocks import Block

from hybridchat.chat import ChatService, Conversation
from hybridchat.chat_auto import AutoView
from hybridchat.errors import HybridChatError, SessionNotFound

log = logging.getLogger(__name__)

SIDEBAR_PAGE = 50  # chats the sidebar lists at first, and more each time "Older chats" is pressed

Updates = dict[Block, Any]


class SessionHandlers:
    """The sidebar's handlers; the page's components and helpers are ``ChatUI``'s."""

    service: ChatService
    auto_view: AutoView
    conversation: gr.State
    chatbot: gr.Chatbot
    browser: gr.BrowserState
    sessions: gr.Radio
    older_button: gr.Button
    shown: gr.State
    model: gr.Dropdown
    _owner_of: Callable[..., tuple[str, dict[str, Any]]]
    _messages: Callable[..., list[Any]]
    _unchanged: Callable[[], Updates]
    _last_model: Callable[..., str]

    def open_session(self, session_id: str | None, browser: dict[str, Any] | None, request: gr.Request) -> Updates:
        owner, browser = self._owner_of(browser, request)
        if not session_id:
            return self._unchanged()
        try:
            conversation = self.service.open(owner, session_id)
        except HybridChatError as exc:
            gr.Warning(str(exc))
            return self._unchanged()
        browser["session"] = session_id
        return {self.conversation: conversation, self.chatbot: self._messages(conversation), self.browser: browser,
                self.model: self._last_model(conversation), **self.auto_view.shown(conversation)}

    def new_chat(self, browser: dict[str, Any] | None, request: gr.Request) -> Updates:
        owner, browser = self._owner_of(browser, request)
        browser["session"] = None
        return {self.conversation: Conversation(owner), self.chatbot: [], self.browser: browser,
                self.sessions: gr.Radio(value=None), **self.auto_view.shown(None)}

    def delete_chat(
        self, conversation: Conversation | None, browser: dict[str, Any] | None, shown: int, request: gr.Request
    ) -> Updates:
        owner, browser = self._owner_of(browser, request)
        if conversation is not None and conversation.session_id:
            try:
                self.service.delete(owner, conversation.session_id)
            except HybridChatError as exc:
                gr.Warning(str(exc))
        browser["session"] = None
        return {self.conversation: Conversation(owner), self.chatbot: [], self.browser: browser,
                **self._sidebar(owner, None, shown), **self.auto_view.shown(None)}

    def show_older(
        self, conversation: Conversation | None, browser: dict[str, Any] | None, shown: int, request: gr.Request
    ) -> Updates:
        owner, _ = self._owner_of(browser, request)
        shown += SIDEBAR_PAGE
        return {self.shown: shown, **self._sidebar(owner, conversation.session_id if conversation else None, shown)}

    def _sidebar(self, owner: str, selected: str | None, shown: int, *, older: bool = True) -> Updates:
        """The sidebar's newest ``shown`` entries, (title · date, session id), and (``older``)
        the button that shows older ones, if there are; left as they are while the store cannot
        list them (the turn or page load has said why)."""
        try:
            sessions = self.service.sessions(owner, shown + 1)
        except HybridChatError as exc:
            log.debug("sessions not listed: %s", exc)
            return {}
        choices = [(f"{s.title or 'Untitled'} · {s.updated_at:%b %d %H:%M}" if s.updated_at else s.title, s.session_id)
                   for s in sessions[:shown]]
        listed: Updates = {self.sessions: gr.Radio(choices=choices, value=selected)}
        return listed | {self.older_button: gr.Button(visible=len(sessions) > shown)} if older else listed

    def _resume(self, owner: str, browser: dict[str, Any]) -> Conversation:
        """The session this browser was in, if it is still there and its own; ``StoreError``
        while the store cannot say (the browser keeps its session for later)."""
        if browser.get("session"):
            try:
                return self.service.open(owner, browser["session"])
            except SessionNotFound:
                browser["session"] = None
        return Conversation(owner)
