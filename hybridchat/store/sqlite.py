"""The embedded default store: one SQLite file (``sqlite:///~/.hybridchat/history.db``).

WAL mode lets the CLI read while the app writes; one connection behind a lock serves the
app's threads, and ``busy_timeout`` waits out another process's write lock.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from hybridchat.errors import SessionNotFound, StoreUnavailable
from hybridchat.store.base import HistoryStore, SessionSummary, Turn, Vote, new_id, title_of, utcnow

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    title      TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    turn_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user_id, updated_at);
CREATE TABLE IF NOT EXISTS turns (
    session_id TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    turn_id    TEXT NOT NULL UNIQUE,
    turn       TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
);
"""


class SqliteStore(HistoryStore):
    def __init__(self, path: str | Path, *, busy_timeout: float = 2.0):
        self.path = Path(path).expanduser()
        try:
            _create_private(self.path)
            self._db = sqlite3.connect(self.path, timeout=busy_timeout, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # With WAL this never corrupts the file; it only skips an fsync per turn.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"The history file {self.path} cannot be opened ({exc}).") from None
        self._lock = threading.Lock()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"The history file {self.path} is not writable now ({exc}).") from None

    def create_session(self, user_id: str, session_id: str | None = None) -> str:
        session_id = session_id or new_id()
        now = utcnow().isoformat()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO sessions (session_id, user_id, created_at, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (session_id) DO NOTHING",
                (session_id, user_id, now, now),
            )
        return session_id

    def append(self, session_id: str, turn: Turn) -> None:
        with self._transaction() as db:
            row = db.execute("SELECT turn_count, title FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
            if row is None:
                raise SessionNotFound(f"No session {session_id!r}.")
            added = db.execute(
                "INSERT INTO turns (session_id, seq, turn_id, turn) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (turn_id) DO NOTHING",
                (session_id, row[0], turn.turn_id, turn.model_dump_json()),
            ).rowcount
            if added:
                db.execute(
                    "UPDATE sessions SET turn_count = turn_count + 1, updated_at = ?, title = ? WHERE session_id = ?",
                    (utcnow().isoformat(), row[1] or title_of(turn.user), session_id),
                )

    def mark(self, session_id: str, turn_id: str, *, picked: bool | None, vote: Vote | None) -> None:
        with self._transaction() as db:
            row = db.execute(
                "SELECT turn FROM turns WHERE session_id = ? AND turn_id = ?", (session_id, turn_id)
            ).fetchone()
            if row is None:
                raise SessionNotFound(f"No turn {turn_id!r} in session {session_id!r}.")
            marked = Turn.model_validate_json(row[0]).model_copy(update={"picked": picked, "vote": vote})
            db.execute("UPDATE turns SET turn = ? WHERE turn_id = ?", (marked.model_dump_json(), turn_id))

    def load(self, session_id: str) -> list[Turn]:
        self.get_session(session_id)
        rows = self._read("SELECT turn FROM turns WHERE session_id = ? ORDER BY seq", (session_id,))
        return [Turn.model_validate_json(row[0]) for row in rows]

    def get_session(self, session_id: str) -> SessionSummary:
        rows = self._read(
            "SELECT session_id, user_id, title, created_at, updated_at, turn_count FROM sessions WHERE session_id = ?",
            (session_id,),
        )
        if not rows:
            raise SessionNotFound(f"No session {session_id!r}.")
        return _summary(rows[0])

    def list_sessions(self, user_id: str | None, limit: int | None = None) -> list[SessionSummary]:
        rows = self._read(
            "SELECT session_id, user_id, title, created_at, updated_at, turn_count FROM sessions "
            "WHERE ? IS NULL OR user_id = ? ORDER BY updated_at DESC, created_at DESC LIMIT ?",
            (user_id, user_id, -1 if limit is None else limit),
        )
        return [_summary(row) for row in rows]

    def delete_session(self, session_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"The history file {self.path} cannot be read now ({exc}).") from None


def _create_private(path: Path) -> None:
    """The file readable by its owner only (and a new folder for it, too): it holds every chat.
    SQLite gives its -wal and -shm files the database file's permissions."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    for existing in (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")):
        if existing.exists() and existing.stat().st_mode & 0o077:
            # Made by an earlier version, readable by everyone; not ours to change: left so.
            with contextlib.suppress(PermissionError):
                existing.chmod(0o600)


def _summary(row: tuple[Any, ...]) -> SessionSummary:
    session_id, user_id, title, created, updated, count = row
    return SessionSummary(
        session_id=session_id,
        user_id=user_id,
        title=title,
        created_at=datetime.fromisoformat(created),
        updated_at=datetime.fromisoformat(updated),
        turn_count=count,
    )
