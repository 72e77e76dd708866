"""Fair shares of the app: no visitor, and no one network, can take it for themselves.

* one reply streaming at a time per visitor (their other tabs wait for it);
* at most ``turns_per_minute`` turns per visitor in any minute (each spends model time and
  Gemini quota);
* at most ``newcomer_turns_per_minute`` turns in any minute from the anonymous visitors of one
  client address who are in their first minute, all together: an anonymous id is free to drop,
  and a script that takes a new one before each turn would otherwise get a new share each time.
  Its cost: anonymous visitors behind one NAT who all arrive at once share it for their first
  minute; a room signs in (IAP, or logins), where it does not apply, or raises it. Its limit: a
  patient script can still gather ids a few a minute and keep each alive past its first minute;
  what it then streams at once is bounded by ``streams_per_client``;
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
        self,
        *,
        turns_per_minute: int,
        streams_per_client: int,
        newcomer_turns_per_minute: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.turns_per_minute = turns_per_minute
        self.streams_per_client = streams_per_client
        self.newcomer_turns_per_minute = newcomer_turns_per_minute
        self._clock = clock
        self._lock = threading.Lock()
        self._streaming: set[str] = set()  # visitors with a reply streaming
        self._per_client: Counter[str] = Counter()
        self._turns: defaultdict[str, deque[float]] = defaultdict(deque)
        self._first_seen: dict[str, float] = {}  # anonymous visitors, while they keep coming
        self._newcomer_turns: defaultdict[str, deque[float]] = defaultdict(deque)  # by client address
        self._swept_at = clock()

    @contextmanager
    def turn(self, visitor: str, client: str | None, *, anonymous: bool = False) -> Iterator[None]:
        """Hold a visitor's (and their address's) slot while a reply streams; ``InputRefused``
        when over a limit. ``anonymous``: an id the app issued, which its holder may drop."""
        with self._lock:
            now = self._clock()
            newcomer = anonymous and client is not None and now - self._first_seen.get(visitor, now) < _WINDOW
            self._refuse_if_over(visitor, client if newcomer else None, now)
            self._refuse_if_streaming_over(client)
            self._streaming.add(visitor)
            if client:
                self._per_client[client] += 1
            recent = self._turns[visitor]  # kept a minute, limit or not: who is new is told by it too
            _prune(recent, now)
            recent.append(now)
            if anonymous:
                self._first_seen.setdefault(visitor, now)
            if newcomer and client and self.newcomer_turns_per_minute:
                self._newcomer_turns[client].append(now)
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

    def _refuse_if_over(self, visitor: str, newcomer_from: str | None, now: float) -> None:
        """Refuse a visitor already streaming, or over their share of turns (or, for a newcomer,
        over the share of the newcomers of their address, ``newcomer_from``)."""
        if visitor in self._streaming:
            raise InputRefused("A reply is still coming in another tab of yours: wait for it, or press Stop there.")
        wait = _wait(self._turns[visitor], self.turns_per_minute, now) if self.turns_per_minute else None
        if wait is not None:
            raise InputRefused(
                f"That is {self.turns_per_minute} messages in a minute, the most this app takes: "
                f"send this one in {wait:.0f} s."
            )
        if newcomer_from and self.newcomer_turns_per_minute:
            wait = _wait(self._newcomer_turns[newcomer_from], self.newcomer_turns_per_minute, now)
            if wait is not None:
                raise InputRefused(
                    f"That is {self.newcomer_turns_per_minute} messages in a minute from visitors new to this app "
                    f"on your network, the most it takes from them: send this one in {wait:.0f} s."
                )

    def _refuse_if_streaming_over(self, client: str | None) -> None:
        if client and self.streams_per_client and self._per_client[client] >= self.streams_per_client:
            raise InputRefused(
                f"{self.streams_per_client} replies are streaming to your network already, the most at once: "
                "try again in a moment."
            )

    def _forget_idle(self, now: float) -> None:
        """Once a minute, drop the visitors and addresses with no turn in the last minute: the
        app meets many. A visitor back after that is new again."""
        if now - self._swept_at < _WINDOW:
            return
        self._swept_at = now
        for recent in (self._turns, self._newcomer_turns):
            for key in [k for k, turns in recent.items() if not turns or now - turns[-1] >= _WINDOW]:
                del recent[key]
        for visitor in [v for v in self._first_seen if v not in self._turns]:
            del self._first_seen[visitor]


def _wait(recent: deque[float], most: int, now: float) -> float | None:
    """Seconds until one more turn fits ``most`` a minute, given the ``recent`` ones; ``None``: now."""
    _prune(recent, now)
    return _WINDOW - (now - recent[0]) if len(recent) >= most else None


def _prune(recent: deque[float], now: float) -> None:
    while recent and now - recent[0] >= _WINDOW:
        recent.popleft()
