"""Fair shares of the app: no visitor, and no one network, can take it for themselves.

* one reply streaming at a time per visitor (their other tabs wait for it);
* at most ``turns_per_minute`` turns per visitor in any minute (each spends model time and
  Gemini quota);
* at most ``streams_per_client`` replies streaming at once from one client address, since a
  script can make itself as many anonymous visitors as it likes. A classroom behind one NAT
  shares an address: the default is half of what the app streams at once.

0 turns a limit off. A refusal is an ``InputRefused`` that says when to try again.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hybridchat.errors import InputRefused

_WINDOW = 60.0


class Limits:
    def __init__(
        self, *, turns_per_minute: int, streams_per_client: int, clock: Callable[[], float] = time.monotonic
    ):
        self.turns_per_minute = turns_per_minute
        self.streams_per_client = streams_per_client
        self._clock = clock
        self._lock = threading.Lock()
        self._streaming: set[str] = set()  # visitors with a reply streaming
        self._per_client: Counter[str] = Counter()
        self._turns: defaultdict[str, deque[float]] = defaultdict(deque)
        self._swept_at = clock()

    @contextmanager
    def turn(self, visitor: str, client: str | None) -> Iterator[None]:
        """Hold a visitor's (and their address's) slot while a reply streams; ``InputRefused``
        when over a limit."""
        with self._lock:
            now = self._clock()
            self._refuse_if_over(visitor, client, now)
            self._streaming.add(visitor)
            if client:
                self._per_client[client] += 1
            if self.turns_per_minute:
                self._turns[visitor].append(now)
                self._forget_idle(now)
        try:
            yield
        finally:
            with self._lock:
                self._streaming.discard(visitor)
                if client:
                    self._per_client[client] -= 1
                    if self._per_client[client] <= 0:
                        del self._per_client[client]

    def _refuse_if_over(self, visitor: str, client: str | None, now: float) -> None:
        if visitor in self._streaming:
            raise InputRefused("A reply is still coming in another tab of yours: wait for it, or press Stop there.")
        if self.turns_per_minute:
            recent = self._turns[visitor]
            while recent and now - recent[0] >= _WINDOW:
                recent.popleft()
            if len(recent) >= self.turns_per_minute:
                wait = _WINDOW - (now - recent[0])
                raise InputRefused(
                    f"That is {self.turns_per_minute} messages in a minute, the most this app takes: "
                    f"send this one in {wait:.0f} s."
                )
        if client and self.streams_per_client and self._per_client[client] >= self.streams_per_client:
            raise InputRefused(
                f"{self.streams_per_client} replies are streaming to your network already, the most at once: "
                "try again in a moment."
            )

    def _forget_idle(self, now: float) -> None:
        """Once a minute, drop the visitors with no turn in the last minute: the app meets many."""
        if now - self._swept_at < _WINDOW:
            return
        self._swept_at = now
        for visitor in [v for v, turns in self._turns.items() if not turns or now - turns[-1] >= _WINDOW]:
            del self._turns[visitor]
