"""One chat turn, independent of the UI: clean the input, stream the reply, save the turn.

The conversation's context is the list of saved ``Turn``s, not what the UI shows, so an
error shown in the chat is never sent to a model, and any backend can answer the next turn.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from hybridchat.backends import ChatBackend, GenerationParams, Usage
from hybridchat.errors import BackendError, HybridChatError, SessionNotFound, StoreError
from hybridchat.store import HistoryStore, Turn
from hybridchat.store.base import utcnow

log = logging.getLogger("hybridchat.turns")

DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024
# C0 controls except tab and newline, DEL, and lone UTF-16 surrogates (not encodable).
_UNWANTED = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")


class InputRefused(HybridChatError):
    """The message or a setting was refused; the text says why."""


def clean_message(text: str | None, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> str:
    """The message without control characters; ``InputRefused`` if empty or too long."""
    cleaned = _UNWANTED.sub("", (text or "").replace("\r\n", "\n").replace("\r", "\n"))
    if not cleaned.strip():
        raise InputRefused("Type a message first.")
    size = len(cleaned.encode("utf-8"))
    if size > max_bytes:
        raise InputRefused(
            f"That message is {size / 1024:.0f} kB; the limit is {max_bytes / 1024:.0f} kB. "
            "Shorten it or send it in parts."
        )
    return cleaned


@dataclass
class Conversation:
    """What one browser tab is chatting in: its session (once saved) and its turns."""

    owner: str
    session_id: str | None = None
    turns: list[Turn] = field(default_factory=list)


@dataclass(frozen=True)
class Progress:
    """The reply so far to ``message`` (as sent: cleaned); ``turn`` is set once it is finished
    and saved (or kept)."""

    message: str
    reply: str
    turn: Turn | None = None
    notice: str | None = None


class ChatService:
    def __init__(
        self,
        backends: dict[str, ChatBackend],
        store: HistoryStore,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ):
        if not backends:
            raise ValueError("no backend is configured: set HYBRIDCHAT_BACKENDS")
        self.backends = backends
        self.store = store
        self.max_message_bytes = max_message_bytes

    def respond(
        self, conversation: Conversation, message: str, backend_name: str, params: GenerationParams
    ) -> Iterator[Progress]:
        """Stream the reply to ``message``; the last ``Progress`` carries the saved turn.

        ``InputRefused`` (before anything is sent) for a bad message or model. Backend
        failures do not raise: they end the turn, whose ``error`` says what happened.
        """
        text = clean_message(message, self.max_message_bytes)
        backend = self.backends.get(backend_name)
        if backend is None:
            raise InputRefused(f"Unknown model {backend_name!r}; choose one from the list.")
        history = [[t.user, t.reply or None] for t in conversation.turns]
        draft = _Draft(text, backend_name, params)
        reply = backend.stream(text, history, params)
        try:
            for piece in reply:
                draft.pieces.append(piece)
                yield Progress(text, "".join(draft.pieces))
        except BackendError as exc:
            draft.status, draft.error = ("interrupted" if draft.pieces else "error"), str(exc)
        except GeneratorExit:  # the user pressed Stop
            draft.status = "interrupted"
            self._save(conversation, draft.turn())
            raise
        turn = draft.turn(getattr(reply, "usage", None))
        yield Progress(text, turn.reply, turn, self._save(conversation, turn))

    def open(self, owner: str, session_id: str) -> Conversation:
        """A saved session of ``owner``'s; ``SessionNotFound`` for anyone else's."""
        if self.store.get_session(session_id).user_id != owner:
            raise SessionNotFound(f"No session {session_id!r}.")
        return Conversation(owner, session_id, self.store.load(session_id))

    def delete(self, owner: str, session_id: str) -> None:
        self.open(owner, session_id)  # the same ownership check
        self.store.delete_session(session_id)

    def _save(self, conversation: Conversation, turn: Turn) -> str | None:
        """Add ``turn`` to the conversation and the store; a notice if it could not be saved yet."""
        conversation.turns.append(turn)
        notice = None
        try:
            if conversation.session_id is None:
                conversation.session_id = self.store.create_session(conversation.owner)
            self.store.append(conversation.session_id, turn)
        except StoreError as exc:
            notice = f"Not saved yet: {exc}"
        log.info(json.dumps({
            "event": "turn",
            "session": conversation.session_id,
            "model": turn.model,
            "status": turn.status,
            "latency_ms": turn.latency_ms,
            "prompt_tokens": turn.prompt_tokens,
            "completion_tokens": turn.completion_tokens,
            "message_chars": len(turn.user),
            "reply_chars": len(turn.reply),
            "saved": notice is None,
        }))
        return notice


@dataclass
class _Draft:
    """A turn while its reply streams."""

    text: str
    backend_name: str
    params: GenerationParams
    pieces: list[str] = field(default_factory=list)
    status: str = "ok"
    error: str | None = None
    started: datetime = field(default_factory=utcnow)
    clock: float = field(default_factory=time.monotonic)

    def turn(self, usage: Usage | None = None) -> Turn:
        return Turn(
            user=self.text,
            model=self.backend_name,
            reply="".join(self.pieces),
            params=self.params.model_dump(exclude_none=True),
            started_at=self.started,
            finished_at=utcnow(),
            latency_ms=round((time.monotonic() - self.clock) * 1000, 1),
            status=self.status,  # type: ignore[arg-type]
            error=self.error,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
        )
