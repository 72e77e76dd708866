"""What visitors say of replies on the chat page: thumbs up or down, and the pick of a side-by-side
pair. ``ChatUI`` takes these handlers from ``FeedbackHandlers``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr
from gradio.blocks import Block

from hybridchat import chat_view
from hybridchat.chat import ChatService, Conversation
from hybridchat.chat_pair import PairView
from hybridchat.errors import InputRefused, SessionNotFound, StoreError
from hybridchat.side_by_side import pick

Updates = dict[Block, Any]


class FeedbackHandlers:
    """The vote and pick handlers; the page's components and helpers are ``ChatUI``'s."""

    service: ChatService
    pair: PairView
    conversation: gr.State
    chatbot: gr.Chatbot
    _owner_of: Callable[..., tuple[str, dict[str, Any]]]
    _messages: Callable[..., list[Any]]
    _unchanged: Callable[[], Updates]

    def vote(
        self, conversation: Conversation | None, browser: dict[str, Any] | None, liked: gr.LikeData,
        request: gr.Request,
    ) -> Updates:
        """A thumbs up or down on a reply (pressed again: taken back), saved with its turn."""
        owner, _ = self._owner_of(browser, request)
        turn_id = chat_view.voted_turn(conversation.turns, liked.index) if conversation else None
        if conversation is None or conversation.owner != owner or turn_id is None:
            return self._unchanged()
        try:
            self.service.vote(conversation, turn_id, "up" if liked.liked is True else "down" if liked.liked is False
                              else None)
        except SessionNotFound:
            gr.Warning("This chat was deleted, so the vote was not saved.")
        except StoreError as exc:
            gr.Warning(f"Your vote is not saved yet: {exc}")
        return {self.conversation: conversation}

    def _picker(self, column: int) -> Callable[..., Updates]:
        def continue_with(conversation: Conversation | None, browser: dict[str, Any] | None,
                          setup: dict[str, Any] | None, request: gr.Request) -> Updates:
            """The chat goes on with this column's reply (a pick, and a vote)."""
            owner, _ = self._owner_of(browser, request)
            chosen = self.pair.choice(conversation, column)
            if conversation is None or conversation.owner != owner or chosen is None:
                return self._unchanged()
            try:
                pick(self.service, conversation, chosen)
            except InputRefused as exc:
                gr.Warning(str(exc))
            except StoreError as exc:
                gr.Warning(f"Your pick is not saved yet: {exc}")
            return {self.conversation: conversation, self.chatbot: self._messages(conversation),
                    **self.pair.shown(conversation, setup)}

        return continue_with

