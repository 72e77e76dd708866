"""A chat turn while its reply streams (``Draft``), and how it was asked: side by side
(``Pairing``), or by Auto (``Route``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from hybridchat.backends import GenerationParams, ReplyStream
from hybridchat.context import Fitted
from hybridchat.store import Turn
from hybridchat.store.base import TurnStatus, utcnow


@dataclass(frozen=True)
class Route:
    """How Auto sends a turn (``hybridchat.auto``): ``reason`` it went to the fallback model
    (``None``: to the first choice). ``hand_back``: should the model fail before its first piece,
    or the chat not fit its context whole, nothing is saved and the last ``Progress`` says why
    in ``handed_back``, for Auto to ask the fallback."""

    reason: str | None = None
    hand_back: bool = False


@dataclass(frozen=True)
class Pairing:
    """A reply's place side by side: the pair's id, its column (0 left, 1 right), and the context
    both replies are given (taken once, before either is saved)."""

    pair: str
    column: int
    context: list[Turn]


@dataclass
class Draft:
    """A turn while its reply streams."""

    text: str
    backend_name: str
    params: GenerationParams
    replaces: str | None = None
    pair: Pairing | None = None
    route: Route | None = None
    pieces: list[str] = field(default_factory=list)
    status: TurnStatus = "ok"
    error: str | None = None
    context_start: int | None = None
    notice: str | None = None
    started: datetime = field(default_factory=utcnow)
    clock: float = field(default_factory=time.monotonic)
    first_piece_at: float | None = None

    def add(self, piece: str) -> None:
        if not piece:  # a backend still at work says so: no text, not the first token
            return
        if not self.pieces:
            self.first_piece_at = time.monotonic()
        self.pieces.append(piece)

    def fitted(self, fitted: Fitted, previous_start: int, model: str) -> None:
        """Record what is sent; a notice only when this turn leaves out more than the last."""
        self.params, self.context_start = fitted.params, fitted.start
        self.notice = (
            f"{fitted.not_sent} earlier turn{'s were' if fitted.not_sent != 1 else ' was'} not sent to "
            f"{model}, to fit its context. They stay saved in this chat."
            if fitted.start > previous_start and fitted.not_sent else None
        )

    def turn(self, label: str, reply: ReplyStream | None = None) -> Turn:
        usage = reply.usage if reply else None
        if self.status == "ok" and reply and reply.finish_reason == "length":
            self.status = "cut_off"
        if self.status == "error":
            self.notice = None  # nothing reached the model: the next answered turn tells
        return Turn(
            user=self.text,
            model=self.backend_name,
            model_label=label,
            reply="".join(self.pieces),
            thought=(reply.thought or None) if reply else None,
            params=self.params.model_dump(exclude_none=True),
            started_at=self.started,
            finished_at=utcnow(),
            latency_ms=_ms_since(self.clock),
            first_token_ms=_ms_since(self.clock, self.first_piece_at) if self.first_piece_at else None,
            status=self.status,
            error=self.error,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            context_start=self.context_start,
            notice=self.notice,
            replaces=self.replaces,
            pair=self.pair.pair if self.pair else None,
            pair_column=self.pair.column if self.pair else None,
            auto=self.route is not None,
            auto_reason=self.route.reason if self.route else None,
        )


def _ms_since(start: float, end: float | None = None) -> float:
    return round(((end or time.monotonic()) - start) * 1000, 1)
