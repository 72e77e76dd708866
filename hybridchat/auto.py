"""Auto: each turn to Gemma, else to Gemini, and back to Gemma once it is well again.

A turn goes to Gemini instead when Gemma is not ready (its health check), has more requests
waiting than ``max_waiting`` (vLLM's ``vllm:num_requests_waiting`` on its ``/metrics``), refuses
or cannot be reached before its first word (429, 503, connection refused: that attempt is not
saved), or when the chat no longer fits Gemma's context whole. What Gemma's health and queue
said holds for ``recheck_seconds``, so that a room's turns do not each ask, and a refusal
counts until then too. The reply's label says who answered and why (``Turn.auto_reason``).

A Gemma reply broken off mid-stream is kept, marked interrupted: the page offers to ask Gemini
(``ask_fallback``), and nothing is asked again on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import closing

from hybridchat import vllm_metrics
from hybridchat.backends import ChatBackend, GenerationParams
from hybridchat.backends.base import short_label
from hybridchat.chat import AUTO, ChatService, Conversation, Progress
from hybridchat.errors import InputRefused, too_long_for
from hybridchat.turn_draft import Route

log = logging.getLogger(__name__)

__all__ = ["AUTO", "AutoRoute"]


class AutoRoute:
    """Auto between the backends ``first`` (Gemma) and ``fallback`` (Gemini); ``default``: the
    selector starts on it (a room's Gemma is configured)."""

    def __init__(
        self, first: ChatBackend, fallback: ChatBackend, *, max_waiting: int = 8, recheck_seconds: float = 10.0,
        default: bool = False,
    ):
        self.first, self.fallback = first, fallback
        self.max_waiting, self.recheck_seconds, self.default = max_waiting, recheck_seconds, default
        self._known: tuple[float, str | None] | None = None  # (when, why not Gemma) as last found
        self._checking = threading.Lock()

    @property
    def name(self) -> str:
        """Gemma's name in a few words, for the reasons."""
        return short_label(self.first.label)

    @property
    def label(self) -> str:
        return f"Auto ({self.name}, else {short_label(self.fallback.label)})"

    @property
    def broken_off(self) -> str:
        return f"{self.name}'s reply was broken off"

    def why_not_first(self) -> str | None:
        """Why a turn should not go to Gemma now (``None``: it should), as last found within
        ``recheck_seconds``; else asked now, by one turn while the others wait for its answer."""
        with self._checking:
            if self._known is not None and time.monotonic() - self._known[0] < self.recheck_seconds:
                return self._known[1]
            self._known = (time.monotonic(), self._check())
            return self._known[1]

    def found(self, reason: str | None) -> None:
        """What a turn found of Gemma (``None``: it answered), held as a check's answer is."""
        with self._checking:
            self._known = (time.monotonic(), reason)

    def _check(self) -> str | None:
        name = self.name
        health = self.first.health()
        if not health.ok:
            log.info("auto: %s is not ready: %s", name, health.detail)
            return f"{name} is not reachable"
        client = getattr(self.first, "client", None)  # a vLLM server's: its /metrics
        load = vllm_metrics.read(client.base_url, timeout=2.0) if client is not None else None
        if load is not None and load.waiting > self.max_waiting:
            return f"{name}'s queue is full ({load.waiting:.0f} waiting)"
        return None

    def respond(
        self, service: ChatService, conversation: Conversation, message: str, params: GenerationParams,
        *, replaces: str | None = None,
    ) -> Iterator[Progress]:
        """The turn, from Gemma where it can answer, else from Gemini with the reason."""
        reason = self.why_not_first()
        if reason is None:
            attempt = service.respond(conversation, message, self.first.name, params, replaces=replaces,
                                      route=Route(hand_back=True))
            with closing(attempt):  # Stop closes this generator: the attempt is saved as far as it came
                for progress in attempt:
                    if progress.handed_back is None:
                        yield progress
                    else:  # the attempt's last: it ends unsaved
                        reason = progress.handed_back
            if reason is None:
                last = progress.turn
                if last is not None and last.status == "interrupted" and last.error:
                    self.found(self.broken_off)
                return
            if reason != too_long_for(self.name):  # about Gemma, not this chat
                self.found(reason)
        yield from service.respond(conversation, message, self.fallback.name, params, replaces=replaces,
                                   route=Route(reason=reason))

    def ask_fallback(self, service: ChatService, conversation: Conversation, params: GenerationParams
                     ) -> Iterator[Progress]:
        """Ask Gemini for the last reply in place of Gemma's broken-off one (which stays saved)."""
        if not offers_fallback(self, conversation):
            raise InputRefused("There is no broken-off reply to ask again for.")
        yield from service.retry(conversation, self.fallback.name, params, route=Route(reason=self.broken_off))


def offers_fallback(auto: AutoRoute | None, conversation: Conversation | None) -> bool:
    """Whether the chat ends on an Auto turn Gemma broke off (not one the visitor stopped)."""
    last = conversation.turns[-1] if conversation and conversation.turns else None
    return (auto is not None and last is not None and last.auto and last.model == auto.first.name
            and last.status == "interrupted" and bool(last.error))


def auto_route(backends: dict[str, ChatBackend], *, max_waiting: int, recheck_seconds: float, default: bool
               ) -> AutoRoute | None:
    """Auto between Gemma and Gemini where both are offered."""
    if not {"gemma", "gemini"} <= set(backends):
        return None
    return AutoRoute(backends["gemma"], backends["gemini"], max_waiting=max_waiting,
                     recheck_seconds=recheck_seconds, default=default)
