"""A store wrapper that loses nothing while the database is down.

Writes are retried with backoff; a write that still fails keeps its turn (or its new
session) in memory, in order, reports ``StoreUnavailable``, and is written before anything
else once the database answers again. Reads include the turns still waiting.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict

import tenacity

from hybridchat.errors import StoreUnavailable
from hybridchat.store.base import HistoryStore, SessionSummary, Turn, new_id, title_of

log = logging.getLogger(__name__)


class ResilientStore(HistoryStore):
    def __init__(self, inner: HistoryStore, *, attempts: int = 3, backoff: float = 0.2):
        self.inner = inner
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(StoreUnavailable),
            stop=tenacity.stop_after_attempt(attempts),
            wait=tenacity.wait_exponential(multiplier=backoff, max=5),
            reraise=True,
        )
        self._lock = threading.RLock()
        self._unsaved_sessions: dict[str, str] = {}  # session id -> owner
        self._unsaved_turns: defaultdict[str, list[Turn]] = defaultdict(list)

    @property
    def pending(self) -> int:
        """How many turns are waiting to be written."""
        with self._lock:
            return sum(map(len, self._unsaved_turns.values()))

    def create_session(self, user_id: str, session_id: str | None = None) -> str:
        session_id = session_id or new_id()
        with self._lock:
            self._unsaved_sessions[session_id] = user_id
            try:
                self.flush(session_id)
            except StoreUnavailable:
                log.warning("history store down: session kept in memory")
        return session_id

    def append(self, session_id: str, turn: Turn) -> None:
        with self._lock:
            self._unsaved_turns[session_id].append(turn)
            self.flush(session_id)

    def flush(self, session_id: str | None = None) -> None:
        """Write what is waiting (for one session, or all); ``StoreUnavailable`` if still down."""
        with self._lock:
            for sid in [session_id] if session_id else list({*self._unsaved_sessions, *self._unsaved_turns}):
                try:
                    if sid in self._unsaved_sessions:
                        self._retry(self.inner.create_session, self._unsaved_sessions[sid], sid)
                        del self._unsaved_sessions[sid]
                    waiting = self._unsaved_turns.get(sid, [])
                    while waiting:
                        self._retry(self.inner.append, sid, waiting[0])
                        waiting.pop(0)
                    self._unsaved_turns.pop(sid, None)
                except StoreUnavailable as exc:
                    raise StoreUnavailable(
                        f"{exc} {self.pending} turn(s) are kept and will be saved when it is back."
                    ) from None

    def load(self, session_id: str) -> list[Turn]:
        self._try_flush(session_id)
        with self._lock:
            waiting = list(self._unsaved_turns.get(session_id, []))
            if session_id in self._unsaved_sessions:
                return waiting
        saved = self.inner.load(session_id)
        stored_ids = {turn.turn_id for turn in saved}
        return saved + [turn for turn in waiting if turn.turn_id not in stored_ids]

    def get_session(self, session_id: str) -> SessionSummary:
        with self._lock:
            owner = self._unsaved_sessions.get(session_id)
            waiting = self._unsaved_turns.get(session_id, [])
            if owner is not None:
                return SessionSummary(
                    session_id=session_id,
                    user_id=owner,
                    title=title_of(waiting[0].user) if waiting else "",
                    created_at=None,
                    updated_at=None,
                    turn_count=len(waiting),
                )
        return self.inner.get_session(session_id)

    def list_sessions(self, user_id: str | None) -> list[SessionSummary]:
        self._try_flush()
        return self.inner.list_sessions(user_id)

    def delete_session(self, session_id: str) -> None:
        with self._lock:
            self._unsaved_sessions.pop(session_id, None)
            self._unsaved_turns.pop(session_id, None)
        self._retry(self.inner.delete_session, session_id)

    def close(self) -> None:
        self.inner.close()

    def _try_flush(self, session_id: str | None = None) -> None:
        try:
            self.flush(session_id)
        except StoreUnavailable:
            pass  # reads still work from the database and the waiting turns

    def _retry(self, call, *args):  # type: ignore[no-untyped-def]
        return self._retrying.copy()(call, *args)
