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

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud import firestore

from hybridchat.errors import SessionNotFound, StoreUnavailable
from hybridchat.store.base import HistoryStore, SessionSummary, Turn, new_id, title_of, utcnow

COLLECTION = "chat_sessions"
LAYOUT = "hybridchat/1"
_CODELAB_START = "Session start"


class FirestoreStore(HistoryStore):
    def __init__(
        self,
        database: str = "chat-app-db",
        *,
        project: str | None = None,
        client: firestore.Client | None = None,
        timeout: float = 10.0,
    ):
        self.database = database
        self.timeout = timeout
        try:
            self._db = client or firestore.Client(project=project, database=database)
        except auth_exceptions.DefaultCredentialsError:
            raise StoreUnavailable(
                "Firestore needs credentials: run `gcloud auth application-default login`, "
                "or set FIRESTORE_EMULATOR_HOST for the emulator."
            ) from None
        self._sessions = self._db.collection(COLLECTION)

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        try:
            yield
        except (api_exceptions.ServiceUnavailable, api_exceptions.DeadlineExceeded, api_exceptions.RetryError) as exc:
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
                    timeout=self.timeout,
                )
            except api_exceptions.Conflict:
                pass  # created before: a retried call
        return session_id

    def append(self, session_id: str, turn: Turn) -> None:
        session = self._sessions.document(session_id)
        stored = session.collection("turns").document(turn.turn_id)

        @firestore.transactional
        def add(transaction: firestore.Transaction) -> None:
            snapshot = session.get(transaction=transaction)
            if not snapshot.exists:
                raise SessionNotFound(f"No session {session_id!r}.")
            if stored.get(transaction=transaction).exists:
                return  # written before: a retried call
            count = snapshot.get("turn_count") or 0
            transaction.create(stored, {"seq": count, **turn.model_dump()})
            transaction.update(
                session,
                {"turn_count": count + 1, "updated": utcnow(), "title": snapshot.get("title") or title_of(turn.user)},
            )

        with self._reachable():
            add(self._db.transaction())

    def load(self, session_id: str) -> list[Turn]:
        with self._reachable():
            snapshot = self._sessions.document(session_id).get(timeout=self.timeout)
            if not snapshot.exists:
                raise SessionNotFound(f"No session {session_id!r}.")
            data = snapshot.to_dict() or {}
            if data.get("layout") != LAYOUT:
                return codelab_turns(data)
            turns = snapshot.reference.collection("turns").order_by("seq").stream(timeout=self.timeout)
            return [Turn.model_validate(_without(doc.to_dict(), "seq")) for doc in turns]

    def get_session(self, session_id: str) -> SessionSummary:
        with self._reachable():
            snapshot = self._sessions.document(session_id).get(timeout=self.timeout)
        if not snapshot.exists:
            raise SessionNotFound(f"No session {session_id!r}.")
        return _summary(snapshot)

    def list_sessions(self, user_id: str) -> list[SessionSummary]:
        # Sorted here, not in the query: equality plus order on another field would need a
        # composite index that the workshop's Terraform does not create.
        with self._reachable():
            found = self._sessions.where(filter=firestore.FieldFilter("owner", "==", user_id)).stream(
                timeout=self.timeout
            )
            summaries = [_summary(snapshot) for snapshot in found]
        never = datetime.min.replace(tzinfo=UTC)
        return sorted(summaries, key=lambda s: (s.updated_at or never, s.created_at or never), reverse=True)

    def delete_session(self, session_id: str) -> None:
        session = self._sessions.document(session_id)
        with self._reachable():
            for doc in session.collection("turns").list_documents():
                doc.delete(timeout=self.timeout)
            session.delete(timeout=self.timeout)

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
            found += [(f"{key}.{sub}", inner) for sub, inner in value.items() if isinstance(inner, dict) and "user" in inner]
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


def _summary(snapshot: firestore.DocumentSnapshot) -> SessionSummary:
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


def _without(data: dict[str, Any] | None, key: str) -> dict[str, Any]:
    return {k: v for k, v in (data or {}).items() if k != key}
