"""A store wrapper that loses nothing while the database is down.

Writes are retried with backoff; a write that still fails keeps its turn (or its new
session) in memory, in order, reports ``StoreUnavailable``, and is written before anything
else once the database answers again. While it is down, calls fail at once instead of each
waiting out the database's timeout, and a background thread tries again every
``retry_every`` seconds, so what waits is saved even if nobody sends another turn. Reads
include the turns still waiting. A session deleted meanwhile (here or elsewhere) takes its
waiting turns with it: they are dropped, never written into a session brought back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

import tenacity

from hybridchat.errors import SessionNotFound, StoreError, StoreUnavailable
from hybridchat.store.base import HistoryStore, SessionSummary, Turn, Vote, new_id, title_of

T = TypeVar("T")
Marks = dict[str, Any]  # a turn's picked and vote, as HistoryStore.mark takes them

log = logging.getLogger(__name__)


class ResilientStore(HistoryStore):
    def __init__(self, inner: HistoryStore, *, attempts: int = 2, backoff: float = 0.2, retry_every: float = 5.0):
        self.inner = inner
        self.retry_every = retry_every
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(StoreUnavailable),
            stop=tenacity.stop_after_attempt(attempts),
            wait=tenacity.wait_exponential(multiplier=backoff, max=5),
            reraise=True,
        )
        self._lock = threading.RLock()  # guards the waiting sessions and turns
        # One writer per session at a time keeps its turns in order; sessions write in parallel.
        self._writers: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._unsaved_sessions: dict[str, str] = {}  # session id -> owner
        self._unsaved_turns: defaultdict[str, list[Turn]] = defaultdict(list)
        # Picks and votes of turns already saved, by session then turn: written after its turns.
        self._unsaved_marks: defaultdict[str, dict[str, Marks]] = defaultdict(dict)
        self._deleted: set[str] = set()  # sessions deleted while this process runs
        self._down_until = 0.0  # monotonic time before which the database is not tried again
        self._last_error = ""
        self._closed = threading.Event()
        self._retrier: threading.Thread | None = None

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
            self._flush_unless_down(session_id)
        except StoreUnavailable:
            log.warning("history store down: session kept in memory")
        return session_id

    def append(self, session_id: str, turn: Turn) -> None:
        with self._lock:
            if session_id in self._deleted:
                raise SessionNotFound(f"No session {session_id!r}: it was deleted.")
            self._unsaved_turns[session_id].append(turn)
        self._flush_unless_down(session_id)

    def mark(self, session_id: str, turn_id: str, *, picked: bool | None, vote: Vote | None) -> None:
        with self._lock:
            waiting = self._unsaved_turns.get(session_id, [])
            for index, turn in enumerate(waiting):
                if turn.turn_id == turn_id:  # not written yet: it will be, marked
                    waiting[index] = turn.model_copy(update={"picked": picked, "vote": vote})
                    return
            self._unsaved_marks[session_id][turn_id] = {"picked": picked, "vote": vote}
        self._flush_unless_down(session_id)

    def flush(self, session_id: str | None = None) -> None:
        """Write what is waiting (for one session, or all); ``StoreUnavailable`` if still down,
        ``SessionNotFound`` if ``session_id`` was deleted meanwhile (its waiting turns dropped)."""
        with self._lock:
            sids = [session_id] if session_id else list(
                {*self._unsaved_sessions, *self._unsaved_turns, *self._unsaved_marks}
            )
        try:
            for sid in sids:
                with self._writer(sid):
                    try:
                        self._write_waiting(sid)
                    except SessionNotFound:
                        self._forget(sid)
                        if sid == session_id:
                            raise
        except StoreUnavailable as exc:
            self._mark_down(str(exc))
            raise self._kept(str(exc)) from None
        self._down_until = 0.0

    def _write_waiting(self, sid: str) -> None:
        with self._lock:
            owner = self._unsaved_sessions.get(sid)
        if owner is not None:
            self._retry(self.inner.create_session, owner, sid)
            with self._lock:
                self._unsaved_sessions.pop(sid, None)
        while True:
            with self._lock:
                waiting = self._unsaved_turns.get(sid)
                if not waiting:
                    self._unsaved_turns.pop(sid, None)
                    break
                turn = waiting[0]
            self._retry(self.inner.append, sid, turn)
            with self._lock:
                written = waiting.pop(0)
                if written is not turn:  # marked while it was being written: the mark goes next
                    self._unsaved_marks[sid][turn.turn_id] = {"picked": written.picked, "vote": written.vote}
        while True:
            with self._lock:
                marks = self._unsaved_marks.get(sid)
                if not marks:
                    self._unsaved_marks.pop(sid, None)
                    return
                turn_id, marked = next(iter(marks.items()))
            self._retry(self.inner.mark, sid, turn_id, **marked)
            with self._lock:
                if marks.get(turn_id) is marked:  # not marked again meanwhile
                    del marks[turn_id]

    def load(self, session_id: str) -> list[Turn]:
        self._try_flush(session_id)
        with self._lock:
            waiting = list(self._unsaved_turns.get(session_id, []))
            if session_id in self._unsaved_sessions:
                return waiting
        self._raise_if_down()
        saved = self.inner.load(session_id)
        with self._lock:
            marks = dict(self._unsaved_marks.get(session_id, {}))
        saved = [turn.model_copy(update=marks[turn.turn_id]) if turn.turn_id in marks else turn for turn in saved]
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
        self._raise_if_down()
        return self.inner.get_session(session_id)

    def list_sessions(self, user_id: str | None, limit: int | None = None) -> list[SessionSummary]:
        self._try_flush()
        self._raise_if_down()
        return self.inner.list_sessions(user_id, limit)

    def delete_session(self, session_id: str) -> None:
        # Under the session's writer lock: a write already under way ends first, none starts after.
        with self._writer(session_id):
            with self._lock:
                only_in_memory = self._unsaved_sessions.pop(session_id, None) is not None
                waiting = self._unsaved_turns.pop(session_id, [])
                marks = self._unsaved_marks.pop(session_id, {})
                self._deleted.add(session_id)
            if only_in_memory:
                return
            try:
                self._raise_if_down()
                self._retry(self.inner.delete_session, session_id)
            except StoreUnavailable:
                with self._lock:  # not deleted after all: its turns wait again
                    self._deleted.discard(session_id)
                    self._unsaved_turns[session_id][:0] = waiting
                    self._unsaved_marks[session_id] = marks | self._unsaved_marks[session_id]
                raise

    def close(self) -> None:
        """Stop retrying in the background, try once more to write what waits, and close."""
        self._closed.set()
        if self._retrier is not None:
            self._retrier.join(timeout=30)
        try:
            self.flush()
        except StoreUnavailable as exc:
            log.error("closing with turns not saved: %s", exc)
        self.inner.close()

    def _writer(self, session_id: str) -> threading.Lock:
        with self._lock:
            return self._writers[session_id]

    def _forget(self, session_id: str) -> None:
        """Drop what waits for a session that no longer exists."""
        with self._lock:
            self._deleted.add(session_id)
            self._unsaved_sessions.pop(session_id, None)
            dropped = len(self._unsaved_turns.pop(session_id, []))
            self._unsaved_marks.pop(session_id, None)
        if dropped:
            log.warning("session %s was deleted: %d turn(s) waiting for it are dropped", session_id, dropped)

    def _flush_unless_down(self, session_id: str | None = None) -> None:
        self._raise_if_down()
        self.flush(session_id)

    def _raise_if_down(self) -> None:
        if time.monotonic() < self._down_until:
            raise self._kept(self._last_error)

    def _kept(self, error: str) -> StoreUnavailable:
        return StoreUnavailable(f"{error} {self.pending} turn(s) are kept and will be saved when it is back.")

    def _mark_down(self, error: str) -> None:
        self._last_error = error
        self._down_until = time.monotonic() + self.retry_every
        with self._lock:
            if self._retrier is None:
                self._retrier = threading.Thread(target=self._retry_in_background, name="store-retry", daemon=True)
                self._retrier.start()

    def _retry_in_background(self) -> None:
        while not self._closed.wait(max(self.retry_every, 0.1)):
            try:
                self.flush()
            except StoreError as exc:  # down still, or a session gone meanwhile: try again later
                log.debug("history store retry failed: %s", exc)
                continue
            with self._lock:
                if not self._unsaved_sessions and not self._unsaved_turns and not self._unsaved_marks:
                    log.info("history store back: the waiting turns are saved")
                    self._retrier = None
                    return

    def _try_flush(self, session_id: str | None = None) -> None:
        try:
            self._flush_unless_down(session_id)
        except StoreUnavailable:
            pass  # reads still work from the database and the waiting turns

    def _retry(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._retrying.copy()(call, *args, **kwargs)
