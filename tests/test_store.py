"""One contract suite for every store (SQLite, Firestore on its emulator), then each store's own cases."""

from __future__ import annotations

import datetime
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import EMULATOR_PROJECT, wait_for
from google.cloud import firestore
from google.cloud.firestore_v1.field_path import FieldPath

from hybridchat.errors import SessionNotFound, StoreUnavailable
from hybridchat.store import HistoryStore, ResilientStore, Turn, open_store
from hybridchat.store.firestore import FirestoreStore
from hybridchat.store.sqlite import SqliteStore


@pytest.fixture(params=["sqlite", "firestore"])
def store(request, tmp_path) -> HistoryStore:
    if request.param == "sqlite":
        opened: HistoryStore = open_store(f"sqlite:///{tmp_path}/history.db", resilient=False)
    else:
        emulator = request.getfixturevalue("firestore_emulator")
        emulator.reset()
        opened = open_store(f"firestore://chat-app-db?project={EMULATOR_PROJECT}", resilient=False)
    yield opened
    opened.close()


@contextmanager
def locked(path) -> Iterator[None]:
    """Another connection holds the SQLite file's write lock meanwhile."""
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        locker.execute("ROLLBACK")
        locker.close()


def turn(n: int, **fields) -> Turn:
    return Turn(user=f"question {n}", model="gemini", reply=f"answer {n}", **fields)


def test_turns_come_back_in_order_with_every_field(store):
    session = store.create_session("alice")
    turns = [
        turn(0, params={"temperature": 0.9, "top_p": 0.95}, latency_ms=12.5),
        turn(1, status="interrupted", error="Gemma stopped answering mid-reply"),
        turn(2),
    ]
    for t in turns:
        store.append(session, t)
    loaded = store.load(session)
    assert [t.user for t in loaded] == ["question 0", "question 1", "question 2"]
    assert loaded[0].params == {"temperature": 0.9, "top_p": 0.95}
    assert loaded[1].status == "interrupted" and loaded[1].error
    assert [t.turn_id for t in loaded] == [t.turn_id for t in turns]
    assert loaded[0].started_at == turns[0].started_at


def test_same_instant_turns_are_all_kept(store):
    # The codelab keyed turns by timestamp: two in one clock tick overwrote each other.
    instant = datetime.datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=datetime.UTC)
    session = store.create_session("alice")
    for n in range(5):
        store.append(session, turn(n, started_at=instant))
    assert [t.user for t in store.load(session)] == [f"question {n}" for n in range(5)]


def test_append_is_idempotent_per_turn_id(store):
    session = store.create_session("alice")
    once = turn(0)
    store.append(session, once)
    store.append(session, once)
    store.append(session, turn(1))
    assert [t.user for t in store.load(session)] == ["question 0", "question 1"]
    assert store.get_session(session).turn_count == 2


def test_sessions_are_listed_per_user_newest_first_with_titles(store):
    first = store.create_session("alice")
    store.append(first, Turn(user="How do   GPUs\nwork? " + "x" * 100, model="gemma", reply="..."))
    second = store.create_session("alice")
    store.append(second, turn(1))
    other = store.create_session("bob")
    listed = store.list_sessions("alice")
    assert [s.session_id for s in listed] == [second, first]
    assert listed[1].title.startswith("How do GPUs work? x") and len(listed[1].title) == 80
    assert listed[1].user_id == "alice" and listed[1].turn_count == 1
    assert [s.session_id for s in store.list_sessions("bob")] == [other]
    assert {s.session_id for s in store.list_sessions(None)} == {first, second, other}
    store.append(first, turn(2))
    assert store.list_sessions("alice")[0].session_id == first


def test_create_session_with_an_id_is_idempotent(store):
    assert store.create_session("alice", "fixed-id") == "fixed-id"
    store.append("fixed-id", turn(0))
    assert store.create_session("alice", "fixed-id") == "fixed-id"
    assert len(store.load("fixed-id")) == 1


def test_delete_removes_the_session_and_its_turns(store):
    session = store.create_session("alice")
    store.append(session, turn(0))
    store.delete_session(session)
    assert store.list_sessions("alice") == []
    with pytest.raises(SessionNotFound):
        store.load(session)
    store.delete_session(session)  # already gone: no error


def test_unknown_sessions_are_refused(store):
    with pytest.raises(SessionNotFound):
        store.append("nope", turn(0))
    with pytest.raises(SessionNotFound):
        store.get_session("nope")


def test_concurrent_appends_lose_nothing(store):
    session = store.create_session("alice")
    batches = [[turn(100 * worker + n) for n in range(5)] for worker in range(4)]

    def write(batch):
        for t in batch:
            store.append(session, t)

    threads = [threading.Thread(target=write, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    loaded = store.load(session)
    assert sorted(t.turn_id for t in loaded) == sorted(t.turn_id for b in batches for t in b)
    for batch in batches:  # each writer's turns keep their order
        positions = [[t.turn_id for t in loaded].index(t.turn_id) for t in batch]
        assert positions == sorted(positions)


# --- Firestore specifics ---------------------------------------------------------------------


def test_reads_a_session_written_in_the_codelabs_layout(firestore_emulator):
    firestore_emulator.reset()
    client = firestore.Client(project=EMULATOR_PROJECT, database="chat-app-db")
    doc = client.collection("chat_sessions").document("session-abc")
    doc.set({"Session start": datetime.datetime(2026, 1, 1, 9, 0, tzinfo=datetime.UTC)})
    # Exactly what the codelab's writer does: the '.' in the key nests the turn one map deeper.
    doc.update({"2026-01-01 09:00:01.250000": {"user": "Hi", "Gemma3 12b it": "Hello!"}})
    doc.update({"2026-01-01 09:00:05.500000": {"user": "And Gemini?", "Gemini": "Here."}})
    # A key kept whole with FieldPath (a fixed writer) is read too.
    doc.update({FieldPath("2026-01-01 09:00:09.000000").to_api_repr(): {"user": "Bye", "Gemini": "Bye!"}})
    raw = doc.get().to_dict()
    assert "2026-01-01 09:00:01" in raw and "250000" in raw["2026-01-01 09:00:01"]
    assert "2026-01-01 09:00:09.000000" in raw

    store = FirestoreStore("chat-app-db", project=EMULATOR_PROJECT)
    loaded = store.load("session-abc")
    assert [(t.user, t.model, t.reply) for t in loaded] == [
        ("Hi", "Gemma3 12b it", "Hello!"),
        ("And Gemini?", "Gemini", "Here."),
        ("Bye", "Gemini", "Bye!"),
    ]
    assert loaded[0].started_at == datetime.datetime(2026, 1, 1, 9, 0, 1, 250000, tzinfo=datetime.UTC)
    summary = store.get_session("session-abc")
    assert summary.title == "Hi" and summary.turn_count == 3


def test_firestore_layout_is_one_document_per_session_and_per_turn(firestore_emulator):
    firestore_emulator.reset()
    store = FirestoreStore("chat-app-db", project=EMULATOR_PROJECT)
    session = store.create_session("alice")
    store.append(session, turn(0))
    client = firestore.Client(project=EMULATOR_PROJECT, database="chat-app-db")
    doc = client.collection("chat_sessions").document(session).get().to_dict()
    assert doc["owner"] == "alice" and doc["title"] == "question 0" and doc["turn_count"] == 1
    stored = list(client.collection("chat_sessions").document(session).collection("turns").stream())
    assert len(stored) == 1 and stored[0].to_dict()["seq"] == 0


# --- nothing lost while the database is down ----------------------------------------------------


def test_firestore_down_then_back_loses_no_turn(firestore_emulator):
    firestore_emulator.reset()
    inner = FirestoreStore("chat-app-db", project=EMULATOR_PROJECT, timeout=1)
    store = ResilientStore(inner, attempts=2, backoff=0.01, retry_every=60)
    session = store.create_session("alice")
    store.append(session, turn(0))

    firestore_emulator.stop(keep_data=True)
    try:
        with pytest.raises(StoreUnavailable, match="kept and will be saved"):
            store.append(session, turn(1))
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="2 turn\\(s\\) are kept"):
            store.append(session, turn(2))
        assert time.monotonic() - started < 0.5, "known down: no second wait for the timeout"
        assert store.pending == 2
        with pytest.raises(StoreUnavailable, match="cannot be reached"):
            store.load(session)
        offline = store.create_session("alice")  # a new chat while down gets an id all the same
        with pytest.raises(StoreUnavailable):
            store.append(offline, turn(9))
    finally:
        firestore_emulator.start()

    _wait_until_answering(inner)
    store.flush()
    assert store.pending == 0
    fresh = FirestoreStore("chat-app-db", project=EMULATOR_PROJECT)
    assert [t.user for t in fresh.load(session)] == ["question 0", "question 1", "question 2"]
    assert [t.user for t in fresh.load(offline)] == ["question 9"]


def test_turns_kept_while_down_are_saved_in_the_background(tmp_path):
    path = tmp_path / "history.db"
    store = ResilientStore(SqliteStore(path, busy_timeout=0.05), attempts=1, retry_every=0.2)
    session = store.create_session("alice")
    with locked(path):
        for n in (0, 1):
            with pytest.raises(StoreUnavailable):
                store.append(session, turn(n))
    wait_for(lambda: not store.pending, 10)
    assert [t.user for t in SqliteStore(path).load(session)] == ["question 0", "question 1"]
    store.close()


def _wait_until_answering(store: HistoryStore, seconds: float = 30) -> None:
    def answers() -> bool:
        try:
            store.list_sessions("nobody")
        except StoreUnavailable:
            return False
        return True

    wait_for(answers, seconds, every=0.2)


def test_sqlite_locked_then_free_loses_no_turn(tmp_path):
    path = tmp_path / "history.db"
    store = ResilientStore(SqliteStore(path, busy_timeout=0.05), attempts=2, backoff=0.01, retry_every=0)
    session = store.create_session("alice")
    store.append(session, turn(0))

    with locked(path):
        with pytest.raises(StoreUnavailable, match="1 turn\\(s\\) are kept"):
            store.append(session, turn(1))

    store.append(session, turn(2))
    assert [t.user for t in SqliteStore(path).load(session)] == ["question 0", "question 1", "question 2"]


def test_open_store_picks_by_url(tmp_path):
    assert isinstance(open_store(f"sqlite:///{tmp_path}/h.db"), ResilientStore)
    assert isinstance(open_store(f"sqlite:///{tmp_path}/h.db", resilient=False), SqliteStore)
    for bad in ("postgres://x", "sqlite://", "history.db"):
        with pytest.raises(ValueError, match="store URL"):
            open_store(bad)


def test_a_slow_write_of_one_session_does_not_hold_up_another(tmp_path):
    held = threading.Event()
    release = threading.Event()

    class SlowForAlice(SqliteStore):
        def append(self, session_id, turn):
            if session_id == alice:
                held.set()
                release.wait(10)
            super().append(session_id, turn)

    store = ResilientStore(SlowForAlice(tmp_path / "history.db"))
    alice, bob = store.create_session("alice"), store.create_session("bob")
    writing = threading.Thread(target=store.append, args=(alice, turn(0)))
    writing.start()
    held.wait(10)
    store.append(bob, turn(1))  # not queued behind Alice's write
    assert writing.is_alive(), "Bob's turn was written while Alice's was still held"
    release.set()
    writing.join()
    assert [t.user for t in store.load(alice)] == ["question 0"]
    assert [t.user for t in store.load(bob)] == ["question 1"]


def test_a_turn_for_a_deleted_session_is_refused_and_blocks_nothing(tmp_path):
    store = ResilientStore(SqliteStore(tmp_path / "history.db"))
    alice, bob = store.create_session("alice"), store.create_session("bob")
    store.append(bob, turn(0))
    store.delete_session(alice)
    with pytest.raises(SessionNotFound):
        store.append(alice, turn(1))  # a reply that finished after its chat was deleted
    assert store.pending == 0
    assert [s.session_id for s in store.list_sessions(None)] == [bob]
    with pytest.raises(SessionNotFound):
        store.get_session(alice)
    store.close()


def test_turns_waiting_for_a_session_deleted_elsewhere_are_dropped_not_kept_for_ever(tmp_path, caplog):
    path = tmp_path / "history.db"
    store = ResilientStore(SqliteStore(path, busy_timeout=0.05), attempts=1, retry_every=3600)
    alice, bob = store.create_session("alice"), store.create_session("bob")
    with locked(path):
        for session in (alice, bob):
            with pytest.raises(StoreUnavailable):
                store.append(session, turn(0))
    SqliteStore(path).delete_session(alice)  # by another replica, or `hybridchat sessions`
    store.flush()
    assert store.pending == 0
    assert "1 turn(s) waiting for it are dropped" in caplog.text
    assert [s.session_id for s in store.list_sessions(None)] == [bob]
    assert [t.user for t in SqliteStore(path).load(bob)] == ["question 0"]
    store.close()


def test_a_delete_while_the_store_is_down_keeps_the_waiting_turns(tmp_path):
    path = tmp_path / "history.db"
    store = ResilientStore(SqliteStore(path, busy_timeout=0.05), attempts=1, retry_every=3600)
    alice = store.create_session("alice")
    with locked(path):
        with pytest.raises(StoreUnavailable):
            store.append(alice, turn(0))
        with pytest.raises(StoreUnavailable):
            store.delete_session(alice)
    store.flush()
    assert [t.user for t in SqliteStore(path).load(alice)] == ["question 0"]
    store.close()


def test_the_sqlite_history_is_readable_by_its_owner_only(tmp_path):
    folder = tmp_path / "new" / ".hybridchat"
    store = SqliteStore(folder / "history.db")
    store.append(store.create_session("alice"), turn(0))
    assert folder.stat().st_mode & 0o777 == 0o700
    for name in ("history.db", "history.db-wal", "history.db-shm"):
        assert (folder / name).stat().st_mode & 0o777 == 0o600, name
    store.close()

    older = tmp_path / "older.db"  # as an earlier version left it
    sqlite3.connect(older).close()
    older.chmod(0o644)
    SqliteStore(older).close()
    assert older.stat().st_mode & 0o777 == 0o600


def test_the_newest_sessions_only_when_a_limit_is_given(store):
    made = [store.create_session("alice") for _ in range(5)]
    for n, session in enumerate(made):
        store.append(session, turn(n))
    store.create_session("bob")
    assert [s.session_id for s in store.list_sessions("alice", limit=2)] == made[:-3:-1]
    assert len(store.list_sessions("alice")) == 5 and len(store.list_sessions(None, limit=3)) == 3
