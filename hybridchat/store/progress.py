"""The room's progress board: each attendee's latest verdict on each exercise, and since when.

``hybridchat room serve`` keeps it; the notebooks' checker cells feed it (``hybridchat.lab.progress``).
One row per attendee and exercise, so the board stays as small as the room whatever is posted.
A verdict older than the one kept (sent late, from an attendee who was offline) changes nothing;
a hint after a hint keeps the time the attendee got stuck, so the page can say for how long.

``open_progress(url)``: ``sqlite:///PATH`` locally, ``firestore://DATABASE[?project=P]`` deployed
(collection ``room_progress``), as ``open_store`` reads a history store's URL.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from hybridchat.errors import StoreUnavailable

Status = Literal["ok", "hint"]
COLLECTION = "room_progress"


@dataclass(frozen=True)
class Standing:
    """Where one attendee stands on one exercise: their latest verdict (``updated``), and since
    when that status holds (``since``: when they got stuck, for a hint)."""

    attendee: str
    exercise: str
    status: Status
    hint: str
    notebook: str
    since: datetime
    updated: datetime

    def after(self, verdict: Standing) -> Standing:
        """This standing once ``verdict`` (a newer one, its ``since`` its time) has come in."""
        if verdict.updated <= self.updated:
            return self
        since = self.since if verdict.status == self.status == "hint" else verdict.since
        return replace(verdict, since=since)


class ProgressStore(ABC):
    """Where the board is kept."""

    @abstractmethod
    def record(self, verdict: Standing) -> None:
        """Take ``verdict`` (``since == updated``: when its checker ran) into the board."""

    @abstractmethod
    def standings(self) -> list[Standing]:
        """Every attendee's standing on every exercise they have checked."""

    def close(self) -> None:  # noqa: B027 (optional)
        """Release connections."""


class SqliteProgress(ProgressStore):
    _SCHEMA = """CREATE TABLE IF NOT EXISTS progress (
        attendee TEXT NOT NULL, exercise TEXT NOT NULL, status TEXT NOT NULL, hint TEXT NOT NULL,
        notebook TEXT NOT NULL, since TEXT NOT NULL, updated TEXT NOT NULL, PRIMARY KEY (attendee, exercise))"""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(self._SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"The progress file {self.path} cannot be opened ({exc}).") from None
        self._lock = threading.Lock()

    def record(self, verdict: Standing) -> None:
        with self._lock:
            row = self._db.execute("SELECT * FROM progress WHERE attendee = ? AND exercise = ?",
                                   (verdict.attendee, verdict.exercise)).fetchone()
            kept = _standing(*row).after(verdict) if row else verdict
            self._db.execute("INSERT OR REPLACE INTO progress VALUES (?, ?, ?, ?, ?, ?, ?)", _row(kept))

    def standings(self) -> list[Standing]:
        with self._lock:
            return [_standing(*row) for row in self._db.execute("SELECT * FROM progress")]

    def close(self) -> None:
        self._db.close()


class FirestoreProgress(ProgressStore):
    def __init__(self, database: str = "chat-app-db", *, project: str | None = None, timeout: float = 5.0):
        from google.cloud import firestore

        self._firestore = firestore
        self._db = firestore.Client(project=project, database=database)
        self._timeout = timeout

    def record(self, verdict: Standing) -> None:
        # The attendee's name is theirs to choose: a hash makes any name a valid document id.
        key = hashlib.sha256(f"{verdict.attendee}\0{verdict.exercise}".encode()).hexdigest()
        document = self._db.collection(COLLECTION).document(key)

        @self._firestore.transactional
        def upsert(transaction: Any) -> None:
            found = document.get(transaction=transaction)
            kept = _standing(**(found.to_dict() or {})).after(verdict) if found.exists else verdict
            transaction.set(document, asdict(kept))

        upsert(self._db.transaction())

    def standings(self) -> list[Standing]:
        documents = self._db.collection(COLLECTION).stream(timeout=self._timeout)
        return [_standing(**(doc.to_dict() or {})) for doc in documents]

    def close(self) -> None:
        self._db.close()


def _row(standing: Standing) -> tuple[str, ...]:
    return (standing.attendee, standing.exercise, standing.status, standing.hint, standing.notebook,
            standing.since.isoformat(), standing.updated.isoformat())


def _standing(attendee: str, exercise: str, status: Status, hint: str, notebook: str,
              since: datetime | str, updated: datetime | str) -> Standing:
    def at(value: datetime | str) -> datetime:  # SQLite keeps ISO text; Firestore gives datetimes back
        return value if isinstance(value, datetime) else datetime.fromisoformat(value)

    return Standing(attendee, exercise, status, hint, notebook, at(since), at(updated))


def open_progress(url: str) -> ProgressStore:
    """``sqlite:///PATH`` (``~`` allowed) or ``firestore://DATABASE[?project=P]``."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite" and url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return SqliteProgress(url[len("sqlite:///"):])
    if parts.scheme == "firestore":
        return FirestoreProgress(parts.netloc or "chat-app-db", project=parse_qs(parts.query).get("project", [None])[0])
    raise ValueError(f"unknown progress store URL {url!r}: use sqlite:///PATH or firestore://DATABASE")
