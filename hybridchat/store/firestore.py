"""Firestore store: database ``chat-app-db``, collection ``chat_sessions``.

Layout: one document per session (``owner``, ``title``, ``created``, ``updated``,
``turn_count``, ``layout``) and its turns in a ``turns`` subcollection, one document per
turn named by ``turn_id``, ordered by a ``seq`` given out in a transaction. The codelab
instead wrote each turn as a field named by ``str(datetime.now())``: two turns within one
clock tick overwrite each other, and the ``.`` in the name makes ``update()`` nest the turn
one map deeper. Sessions in that layout are still readable (``load``).

URL: ``firestore://DATABASE[?project=PROJECT]``; the project defaults to the client's
(``GOOGLE_CLOUD_PROJECT`` or application default credentials). Set
``FIRESTORE_EMULATOR_HOST`` to use the emulator.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.auth import exceptions as auth_exceptions
from google.cloud import firestore

from hybridchat.errors import SessionNotFound, StoreUnavailable
from hybridchat.store.base import HistoryStore, SessionSummary, Turn, Vote, new_id, title_of, utcnow

log = logging.getLogger(__name__)

COLLECTION = "chat_sessions"
LAYOUT = "hybridchat/1"
_CODELAB_START = "Session start"
_APPEND_ATTEMPTS = 5
# The composite index a user's newest sessions are read by (infra/ creates it).
SESSIONS_INDEX = (("owner", "ASCENDING"), ("updated", "DESCENDING"))


class FirestoreStore(HistoryStore):
    def __init__(
        self,
        database: str = "chat-app-db",
        *,
        project: str | None = None,
        client: firestore.Client | None = None,
        timeout: float = 5.0,
    ):
        self.database = database
        # Every call is bounded: the client's default retries run for minutes when the
        # database is down, and the user is waiting.
        self._bounded: dict[str, Any] = {"timeout": timeout, "retry": Retry(initial=0.1, maximum=1.0, timeout=timeout)}
        self._project = project
        self._owns_client = client is None
        self._reconnect = False
        self._connect(client)
        # Appends to one session are serialised in-process; the write precondition then
        # only has to guard against other processes.
        self._append_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_lock = threading.Lock()

    def _connect(self, client: firestore.Client | None = None) -> None:
        try:
            self._db = client or firestore.Client(project=self._project, database=self.database)
        except auth_exceptions.DefaultCredentialsError:
            raise StoreUnavailable(
                "Firestore needs credentials: run `gcloud auth application-default login`, "
                "or set FIRESTORE_EMULATOR_HOST for the emulator."
            ) from None
        self._sessions = self._db.collection(COLLECTION)

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        if self._reconnect and self._owns_client:
            # After an outage the old gRPC channel may sit in reconnect backoff for a long
            # time; a fresh client connects as soon as the database is back.
            self._db.close()
            self._connect()
            self._reconnect = False
        try:
            yield
        except (
            api_exceptions.ServiceUnavailable,
            api_exceptions.DeadlineExceeded,
            api_exceptions.Aborted,
            api_exceptions.RetryError,
        ) as exc:
            self._reconnect = True
            log.debug("Firestore unreachable: %r", getattr(exc, "cause", None) or exc)
            raise StoreUnavailable(
                f"Firestore database {self.database!r} cannot be reached ({type(exc).__name__})."
            ) from None

    def create_session(self, user_id: str, session_id: str | None = None) -> str:
        session_id = session_id or new_id()
        now = utcnow()
        with self._reachable():
            try:
                self._sessions.document(session_id).create(
                    {"owner": user_id, "title": "", "created": now, "updated": now, "turn_count": 0, "layout": LAYOUT},
                    **self._bounded,
                )
            except api_exceptions.Conflict:
                pass  # created before: a retried call
        return session_id

    def append(self, session_id: str, turn: Turn) -> None:
        session = self._sessions.document(session_id)
        stored = session.collection("turns").document(turn.turn_id)
        with self._locks_lock:
            lock = self._append_locks[session_id]
        with lock, self._reachable():
            # Optimistic, not a transaction: a transaction's begin call cannot be given a
            # timeout and retries for minutes while the database is down.
            for _ in range(_APPEND_ATTEMPTS):
                snapshot = session.get(**self._bounded)
                if not snapshot.exists:
                    raise SessionNotFound(f"No session {session_id!r}.")
                data = snapshot.to_dict() or {}
                count = data.get("turn_count", 0)
                batch = self._db.batch()
                batch.create(stored, {"seq": count, **turn.model_dump()})
                batch.update(
                    session,
                    {"turn_count": count + 1, "updated": utcnow(), "title": data.get("title") or title_of(turn.user)},
                    option=self._db.write_option(last_update_time=snapshot.update_time),
                )
                try:
                    batch.commit(**self._bounded)
                    return
                except api_exceptions.AlreadyExists:
                    return  # written before: a retried call
                except api_exceptions.FailedPrecondition:
                    continue  # another writer appended first: take the next seq
        raise StoreUnavailable("Firestore is too busy to save the turn now; it will be retried.")

    def mark(self, session_id: str, turn_id: str, *, picked: bool | None, vote: Vote | None) -> None:
        stored = self._sessions.document(session_id).collection("turns").document(turn_id)
        with self._reachable():
            try:
                stored.update({"picked": picked, "vote": vote}, **self._bounded)
            except api_exceptions.NotFound:
                raise SessionNotFound(f"No turn {turn_id!r} in session {session_id!r}.") from None

    def load(self, session_id: str) -> list[Turn]:
        with self._reachable():
            snapshot = self._sessions.document(session_id).get(**self._bounded)
            if not snapshot.exists:
                raise SessionNotFound(f"No session {session_id!r}.")
            data = snapshot.to_dict() or {}
            if data.get("layout") != LAYOUT:
                return codelab_turns(data)
            turns = snapshot.reference.collection("turns").order_by("seq").stream(**self._bounded)
            return [Turn.model_validate(doc.to_dict() or {}) for doc in turns]  # its "seq" is ignored

    def get_session(self, session_id: str) -> SessionSummary:
        with self._reachable():
            snapshot = self._sessions.document(session_id).get(**self._bounded)
        if not snapshot.exists:
            raise SessionNotFound(f"No session {session_id!r}.")
        return _summary(snapshot)

    def list_sessions(self, user_id: str | None, limit: int | None = None) -> list[SessionSummary]:
        if user_id is not None and limit is not None:
            try:
                return self._newest(user_id, limit)
            except api_exceptions.FailedPrecondition as exc:  # the index is missing, or still building
                log.warning("Firestore cannot order sessions by owner yet (%s); reading them all", exc.message)
        with self._reachable():
            query = self._sessions if user_id is None else self._sessions.where(
                filter=firestore.FieldFilter("owner", "==", user_id)
            )
            summaries = [_summary(snapshot) for snapshot in query.stream(**self._bounded)]
        never = datetime.min.replace(tzinfo=UTC)
        ordered = sorted(summaries, key=lambda s: (s.updated_at or never, s.created_at or never), reverse=True)
        return ordered[:limit]

    def _newest(self, user_id: str, limit: int) -> list[SessionSummary]:
        """One user's newest sessions, read as few as asked: the query needs the composite index
        (owner, updated descending) that infra/ creates (SESSIONS_INDEX)."""
        with self._reachable():
            query = (
                self._sessions.where(filter=firestore.FieldFilter("owner", "==", user_id))
                .order_by("updated", direction=firestore.Query.DESCENDING)
                .limit(limit)
            )
            return [_summary(snapshot) for snapshot in query.stream(**self._bounded)]

    def delete_session(self, session_id: str) -> None:
        session = self._sessions.document(session_id)
        with self._reachable():
            for doc in session.collection("turns").list_documents(**self._bounded):
                doc.delete(**self._bounded)
            session.delete(**self._bounded)

    def close(self) -> None:
        self._db.close()


def codelab_turns(data: dict[str, Any]) -> list[Turn]:
    """Turns of a session document in the codelab's layout, oldest first.

    Each turn is a field ``{timestamp: {"user": text, model_name: reply}}``; a timestamp
    with a fraction was split by ``update()`` into ``{"2024-01-01 10:00:00": {"123456": …}}``.
    """
    found: list[tuple[str, dict[str, Any]]] = []
    for key, value in data.items():
        if key == _CODELAB_START or not isinstance(value, dict):
            continue
        if "user" in value:
            found.append((key, value))
        else:
            found += [
                (f"{key}.{sub}", inner) for sub, inner in value.items() if isinstance(inner, dict) and "user" in inner
            ]
    turns = []
    for stamp, interaction in sorted(found):
        model, reply = next(((k, v) for k, v in interaction.items() if k != "user"), ("unknown", ""))
        try:
            started = datetime.fromisoformat(stamp)
        except ValueError:
            started = utcnow()
        if started.tzinfo is None:
            started = started.replace(tzinfo=UTC)
        turns.append(Turn(user=str(interaction["user"]), model=model, reply=str(reply), started_at=started))
    return turns


def _summary(snapshot: firestore.DocumentSnapshot[Any]) -> SessionSummary:
    data = snapshot.to_dict() or {}
    if data.get("layout") == LAYOUT:
        return SessionSummary(
            session_id=snapshot.id,
            user_id=data.get("owner"),
            title=data.get("title", ""),
            created_at=data.get("created"),
            updated_at=data.get("updated"),
            turn_count=data.get("turn_count", 0),
        )
    turns = codelab_turns(data)
    return SessionSummary(
        session_id=snapshot.id,
        user_id=None,
        title=title_of(turns[0].user) if turns else "",
        created_at=data.get(_CODELAB_START),
        updated_at=turns[-1].started_at if turns else data.get(_CODELAB_START),
        turn_count=len(turns),
    )
