"""The app's web server: uvicorn, with what a public address needs that uvicorn lacks.

uvicorn sets no deadline for a request to arrive: a client that sends half a request holds
its connection, and a file descriptor, for ever, and a thousand of them leave none for
``/healthz`` or new visitors. Here each request must arrive whole within
``request_timeout`` seconds of its first byte (the response, streamed for minutes, has no
limit), and the process may hold as many connections as its hard file limit allows, less the
descriptors kept for everything else it opens (``ConnectionBudget``). At that many, a new
connection takes the place of the oldest one whose request is still arriving (or that sits
idle between two requests), or, if every connection is a request being answered, is closed at
once: the app never runs out of descriptors, and says so once a minute, with counts, not a
traceback per connection.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import OrderedDict
from collections.abc import Callable

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from hybridchat.config import Settings

log = logging.getLogger(__name__)

_RECEIVING = (h11.IDLE, h11.SEND_BODY)  # a request not yet whole (or not yet begun)


class ConnectionBudget:
    """The connections the app may hold at once (``most``), those it holds, and, oldest first,
    those whose request is still arriving: the ones to give up first."""

    def __init__(self, most: int, clock: Callable[[], float] = time.monotonic):
        self.most = most
        self.held = 0
        self.arriving: OrderedDict[asyncio.Transport, None] = OrderedDict()
        self._clock = clock
        self._counts = {"refused": 0, "cut": 0, "failed": 0}
        self._said_at = -_REPORT_EVERY  # the first time is told at once
        self._pending: asyncio.TimerHandle | None = None

    def admit(self, transport: asyncio.Transport) -> None:
        """Count a new connection; at the budget, close the oldest still arriving, or this one."""
        self.held += 1
        if self.held <= self.most:
            return
        if self.arriving:
            oldest, _ = self.arriving.popitem(last=False)
            oldest.close()
            self.note("cut")
        else:
            transport.close()
            self.note("refused")

    def note(self, what: str) -> None:
        """Count one event (on the event loop); told at once if nothing was for a minute, else
        with the others at the end of that minute."""
        self._counts[what] += 1
        since = self._clock() - self._said_at
        if since >= _REPORT_EVERY:
            self.report()
        elif self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(_REPORT_EVERY - since, self.report)

    def report(self) -> None:
        """One line for all that happened since the last: never one per connection."""
        self._pending = None
        if any(self._counts.values()):
            log.warning(
                "at its most connections (%d): in the last minute closed %d whose request was still arriving "
                "or that sat idle, refused %d new ones (every connection was being answered) and could not "
                "accept %d (no file descriptor left)",
                self.most, self._counts["cut"], self._counts["refused"], self._counts["failed"],
            )
        self._counts = dict.fromkeys(self._counts, 0)
        self._said_at = self._clock()


_REPORT_EVERY = 60.0


class _AcceptFailures(logging.Filter):
    """asyncio logs a traceback each time accept() finds no descriptor left: counted instead."""

    def __init__(self, budget: ConnectionBudget):
        super().__init__()
        self.budget = budget

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("socket.accept() out of system resource"):
            self.budget.note("failed")
            return False
        return True


def deadline_protocol(request_timeout: float, budget: ConnectionBudget) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request is not whole in time, within
    the ``budget`` of connections."""

    class DeadlineH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            budget.admit(transport)
            self._watch()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch()  # kept alive and idle until its next request: as good as one still arriving

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            budget.held -= 1
            super().connection_lost(exc)

        def _watch(self) -> None:
            """Armed once while a request comes in (never pushed back by more bytes), disarmed
            once it is whole. An idle kept-alive connection is uvicorn's keep-alive timeout's."""
            if self.transport.is_closing():
                return
            if self.conn.their_state not in _RECEIVING:
                self._disarm()
            elif self._deadline is None:
                self._deadline = self.loop.call_later(request_timeout, self._expire)
                budget.arriving[self.transport] = None

        def _disarm(self) -> None:
            budget.arriving.pop(self.transport, None)
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if self.conn.their_state in _RECEIVING and self.transport.get_protocol() is self:
                log.debug("closing a connection whose request did not arrive within %g s", request_timeout)
                self.transport.close()

    return DeadlineH11Protocol


def raise_file_limit() -> int:
    """Let the process open as many files as its hard limit allows (the soft one is often 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return max(wanted, soft)


def connection_budget(file_limit: int, settings: Settings) -> ConnectionBudget:
    """The file limit less what the app opens besides its visitors' connections (a connection
    to a model for each chat streaming, the history database, logs, Python's own files) and
    less two accept batches: asyncio accepts up to the backlog at once before the app sees one,
    and a connection the app closes frees its descriptor a moment later."""
    return ConnectionBudget(max(file_limit - settings.concurrency - 2 * BACKLOG - _KEPT_FOR_THE_REST, 16))


BACKLOG = 128  # connections waiting to be accepted (uvicorn's default, 2,048, is one accept batch too)
_KEPT_FOR_THE_REST = 128


def serve(app: ASGIApp, host: str, port: int, settings: Settings) -> None:
    budget = connection_budget(raise_file_limit(), settings)
    logging.getLogger("asyncio").addFilter(_AcceptFailures(budget))
    # X-Forwarded-For is believed from the proxies named only: anyone else could claim any address
    # (and the per-address limit). log_config=None: uvicorn logs through hybridchat's handlers.
    uvicorn.run(
        app, host=host, port=port, http=deadline_protocol(settings.request_timeout, budget), log_level="warning",
        log_config=None, proxy_headers=True, forwarded_allow_ips=settings.forwarded_allow_ips, backlog=BACKLOG,
        ws="none",  # Gradio needs no WebSocket; an upgraded connection would leave the budget's count
    )
