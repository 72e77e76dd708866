"""The app's web server: uvicorn, with what a public address needs that uvicorn lacks.

uvicorn sets no deadline for a request to arrive: a client that sends half a request holds
its connection, and a file descriptor, for ever, and a thousand of them leave none for
``/healthz`` or new visitors. Here each request must arrive whole within
``request_timeout`` seconds of its first byte (the response, streamed for minutes, has no
limit), and the process may hold as many connections as its hard file limit allows.
"""

from __future__ import annotations

import asyncio
import logging
import resource

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from hybridchat.config import Settings

log = logging.getLogger(__name__)

_RECEIVING = (h11.IDLE, h11.SEND_BODY)  # a request not yet whole (or not yet begun)


def deadline_protocol(request_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request is not whole in time."""

    class DeadlineH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._watch()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _watch(self) -> None:
            """Armed once while a request comes in (never pushed back by more bytes), disarmed
            once it is whole. An idle kept-alive connection is uvicorn's keep-alive timeout's."""
            if self.conn.their_state not in _RECEIVING:
                self._disarm()
            elif self._deadline is None:
                self._deadline = self.loop.call_later(request_timeout, self._expire)

        def _disarm(self) -> None:
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


def serve(app: ASGIApp, host: str, port: int, settings: Settings) -> None:
    raise_file_limit()
    # X-Forwarded-For is believed from the proxies named only: anyone else could claim any address
    # (and the per-address limit). log_config=None: uvicorn logs through hybridchat's handlers.
    uvicorn.run(
        app, host=host, port=port, http=deadline_protocol(settings.request_timeout), log_level="warning",
        log_config=None, proxy_headers=True, forwarded_allow_ips=settings.forwarded_allow_ips,
    )
