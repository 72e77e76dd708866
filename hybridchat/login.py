"""Shared-password login (``--auth-file``, ``HYBRIDCHAT_AUTH``) that slows a guesser, not the user.

``Logins`` is Gradio's ``auth`` callable; passwords are compared in constant time. Gradio hands
it no request, so ``LoginThrottle``, around Gradio's ``POST /login``, counts failed logins per
client address: after two, that address's next try is taken 1 s later, then 2 s, doubling with
each failure up to a minute, and a try before then is refused unchecked with when to try again
(``Retry-After`` and the answer's ``detail``; Gradio's login page shows its own "incorrect
credentials", and ``WAIT_NOTE`` above the form). A try counts as failed from the moment it
comes until its answer says otherwise, so tries sent all at once are not all checked. A right
password ends it. A guesser so goes at
about one try a minute, and a visitor on another network is never held up, whatever user name
the guesser tries. A classroom behind one NAT shares an address: a guesser there slows the
room's logins too, and nobody else's.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from hybridchat.guard import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

FREE_FAILURES = 2
LONGEST_WAIT = 60.0
_REMEMBERED = 10_000  # addresses with failures kept (oldest forgotten first)
LOGIN_PATHS = ("/login", "/login/")
WAIT_NOTE = ("After a few wrong passwords from one network, its next tries wait a little, up to a minute: "
             "if your password is refused, wait a minute and try again.")


class Logins:
    """Gradio's ``auth`` callable: ``Logins([("alice", "pw")])("alice", "pw")`` is ``True``."""

    def __init__(self, accounts: list[tuple[str, str]]):
        self._passwords = dict(accounts)

    def __call__(self, username: str, password: str) -> bool:
        expected = self._passwords.get(username)
        # Compared even for an unknown name, so the time taken does not tell names apart.
        right = hmac.compare_digest(password.encode(), (expected or "\0" + password).encode())
        return right and expected is not None


@dataclass
class _Failures:
    count: int = 0
    refused_until: float = 0.0


class LoginThrottle:
    """ASGI middleware: failed logins slow down the address they come from."""

    def __init__(self, app: ASGIApp, clock: Callable[[], float] = time.monotonic):
        self.app = app
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        if scope["type"] != "http" or scope["method"] != "POST" or path not in LOGIN_PATHS:
            await self.app(scope, receive, send)
            return
        address = (scope.get("client") or ("unknown",))[0]
        wait, before = self._begin(address)
        if wait > 0:
            await _refuse(send, wait)
            return
        status = 0

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            self._end(address, status, before)

    def _begin(self, address: str) -> tuple[float, _Failures]:
        """The wait before ``address`` may try again; else its try, counted as failed until it is
        not (so that tries sent all at once are not all checked), and what it counted before."""
        with self._lock:
            now = self._clock()
            failures = self._failures.pop(address, None) or _Failures()
            self._failures[address] = failures  # the most recent last: the oldest is forgotten first
            if now < failures.refused_until:
                return failures.refused_until - now, failures
            before = _Failures(failures.count, failures.refused_until)
            failures.count += 1
            if failures.count > FREE_FAILURES:
                failures.refused_until = now + min(2.0 ** (failures.count - FREE_FAILURES - 1), LONGEST_WAIT)
            while len(self._failures) > _REMEMBERED:
                self._failures.popitem(last=False)
            return 0.0, before

    def _end(self, address: str, status: int, before: _Failures) -> None:
        """A right password ends the count; a wrong one keeps the try counted; anything else
        (a malformed form, a crash) was not a guess."""
        with self._lock:
            failures = self._failures.get(address)
            if status == 200:
                self._failures.pop(address, None)
            elif status == 400 and failures is not None and failures.count > FREE_FAILURES:
                log.warning("login: %d failed tries from one address; its next is taken in %.0f s",
                            failures.count, max(failures.refused_until - self._clock(), 0))
            elif status != 400 and failures is not None:
                failures.count, failures.refused_until = before.count, before.refused_until


async def _refuse(send: Send, wait: float) -> None:
    """Gradio's login page shows a 400 as a failed login (any other status, not at all)."""
    seconds = math.ceil(wait)
    detail = f"Too many wrong passwords from your network: try again in {seconds} s."
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": 400, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(seconds).encode())]})
    await send({"type": "http.response.body", "body": body})
