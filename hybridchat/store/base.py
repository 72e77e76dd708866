"""The contract every history store keeps.

A session belongs to one user and holds turns in the order they were appended. Every
store guarantees:

* ``append`` is idempotent per ``Turn.turn_id``: writing the same turn twice (a retry after
  a write whose answer was lost) stores it once;
* turns come back from ``load`` in append order, never overwritten or merged;
* ``create_session`` with an explicit ``session_id`` is idempotent too, so a session made
  while the database was down can be created later under the id the user already has;
* ``list_sessions`` returns a user's sessions (all, for ``None``), most recently updated first,
  the newest ``limit`` of them when it is given;
* a turn's text never changes; ``mark`` sets only what a person says of it afterwards, its
  ``picked`` and ``vote``;
* a store that cannot be reached raises ``StoreUnavailable``; an unknown id raises
  ``SessionNotFound``.

Every field added to ``Turn`` has a default: turns saved before it load unchanged.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TITLE_LENGTH = 80


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


# ok; cut_off: stopped at max_tokens; interrupted: broken off mid-reply; error: no reply
TurnStatus = Literal["ok", "cut_off", "interrupted", "error"]
Vote = Literal["up", "down"]


class Turn(BaseModel):
    """One exchange: what the user said, which model answered, and the reply.

    ``Turn(user="Hi", model="gemini", reply="Hello!")``
    """

    model_config = ConfigDict(frozen=True)

    user: str
    model: str
    reply: str
    # The model as the chat named it when it answered, e.g. "Gemma (google/gemma-3-12b-it)".
    model_label: str | None = None
    # A thinking model's reasoning before the reply: shown collapsed above it, never sent back.
    thought: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    latency_ms: float | None = None
    first_token_ms: float | None = None  # until the reply's first piece came: what the visitor waited
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    status: TurnStatus = "ok"
    error: str | None = None
    # The context sent: earlier turns from this index on (this model's next turns start there
    # too, so the prompt's beginning stays the same), and why earlier ones were left out.
    context_start: int | None = None
    notice: str | None = None
    turn_id: str = Field(default_factory=new_id)
    # Retry: the turn this one asks again for. That one stays saved, but no model sees it again
    # and the chat no longer shows it.
    replaces: str | None = None
    # Side by side: the id both replies to one message share, and this one's column (0 left, 1 right).
    pair: str | None = None
    pair_column: int | None = None
    # Whether the chat continued with this reply of its pair (None: not picked, or no pair);
    # a person's thumbs up or down. Both are set later, by ``HistoryStore.mark``.
    picked: bool | None = None
    vote: Vote | None = None
    # What the reply cost in US dollars (an estimate for a self-hosted model: hybridchat.costs),
    # and whether its token counts were estimated because the server reported none.
    cost_usd: float | None = None
    tokens_estimated: bool = False
    # Asked with Auto (hybridchat.auto), and why it went to the fallback model (None: to Gemma).
    auto: bool = False
    auto_reason: str | None = None


class SessionSummary(BaseModel):
    """A line of a user's session list."""

    session_id: str
    user_id: str | None
    title: str
    created_at: datetime | None
    updated_at: datetime | None
    turn_count: int


def title_of(text: str) -> str:
    """A session title from its first message: one line, at most ``TITLE_LENGTH`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1] + "…"


class HistoryStore(ABC):
    """Where conversations are kept (see the module docstring for the guarantees)."""

    @abstractmethod
    def create_session(self, user_id: str, session_id: str | None = None) -> str:
        """Start a session for ``user_id``; returns its id."""

    @abstractmethod
    def append(self, session_id: str, turn: Turn) -> None:
        """Add ``turn`` at the end of the session (once, whatever the retries)."""

    @abstractmethod
    def load(self, session_id: str) -> list[Turn]:
        """The session's turns in order."""

    @abstractmethod
    def mark(self, session_id: str, turn_id: str, *, picked: bool | None, vote: Vote | None) -> None:
        """Set the saved turn's ``picked`` and ``vote`` (``SessionNotFound`` for an unknown turn)."""

    @abstractmethod
    def get_session(self, session_id: str) -> SessionSummary:
        """The session's summary, with its owner."""

    @abstractmethod
    def list_sessions(self, user_id: str | None, limit: int | None = None) -> list[SessionSummary]:
        """The user's sessions (everyone's for ``None``), most recently updated first; the
        newest ``limit`` only, when given."""

    @abstractmethod
    def delete_session(self, session_id: str) -> None:
        """Remove the session and its turns (no error if it is already gone)."""

    def close(self) -> None:  # noqa: B027 (optional: a store without connections has nothing to do)
        """Release connections."""
