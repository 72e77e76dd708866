"""Shared-password login (``--auth-file``, ``HYBRIDCHAT_AUTH``) that slows guessing down.

After two failed logins for a user name, that name is refused without a check for a while:
1 s after the third failure, doubling with each one after, up to a minute. A right password
ends it. Guessing at the login route so goes at about one try a minute instead of hundreds a
second; a visitor who mistypes twice waits a second. Passwords are compared in constant time.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

FREE_FAILURES = 2
LONGEST_WAIT = 60.0
_REMEMBERED = 10_000  # user names with failures kept (oldest forgotten first)


@dataclass
class _Failures:
    count: int = 0
    refused_until: float = 0.0


class Logins:
    """Gradio's ``auth`` callable: ``Logins([("alice", "pw")])("alice", "pw")`` is ``True``."""

    def __init__(self, accounts: list[tuple[str, str]], clock: Callable[[], float] = time.monotonic):
        self._passwords = dict(accounts)
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def __call__(self, username: str, password: str) -> bool:
        with self._lock:
            now = self._clock()
            failures = self._failures.get(username)
            if failures is not None and now < failures.refused_until:
                return False  # not checked: a guess now tells nothing
            expected = self._passwords.get(username)
            # Compared even for an unknown name, so the time taken does not tell names apart.
            right = hmac.compare_digest(password.encode(), (expected or "\0" + password).encode())
            if right and expected is not None:
                self._failures.pop(username, None)
                return True
            failures = self._failures.pop(username, None) or _Failures()
            failures.count += 1
            if failures.count > FREE_FAILURES:
                wait = min(2.0 ** (failures.count - FREE_FAILURES - 1), LONGEST_WAIT)
                failures.refused_until = now + wait
                log.warning(
                    "login: %d failed tries for one user name; the next is taken in %.0f s", failures.count, wait
                )
            self._failures[username] = failures
            while len(self._failures) > _REMEMBERED:
                self._failures.popitem(last=False)
            return False
