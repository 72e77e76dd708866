"""The store contract's later fields (side by side, picks, votes, cost, Auto) through SQLite and the
Firestore emulator: saved and loaded, marked afterwards, and turns saved before them still load."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest
from conftest import EMULATOR_PROJECT
from google.cloud import firestore
from test_store import locked, store, turn  # noqa: F401 (store: the contract suite's fixture)

from hybridchat.errors import SessionNotFound, StoreUnavailable
from hybridchat.store import ResilientStore, Turn
from hybridchat.store.sqlite import SqliteStore

# The fields a turn had before side by side: what an earlier version wrote.
LATER_FIELDS = {"pair", "pair_column", "picked", "vote", "cost_usd", "tokens_estimated", "auto", "auto_reason"}


def as_written_before(t: Turn) -> dict:
    return {key: value for key, value in t.model_dump(mode="json").items() if key not in LATER_FIELDS}


def test_a_pair_its_pick_vote_and_cost_are_saved_and_marked(store):  # noqa: F811
    session = store.create_session("alice")
    left = turn(0, pair="p1", pair_column=0, cost_usd=0.00031, tokens_estimated=True)
    right = turn(0, pair="p1", pair_column=1, cost_usd=0.0)
    store.append(session, left)
    store.append(session, right)
    store.mark(session, right.turn_id, picked=True, vote=None)
    store.mark(session, left.turn_id, picked=False, vote="down")
    loaded = {t.turn_id: t for t in store.load(session)}
    assert (loaded[left.turn_id].pair, loaded[left.turn_id].pair_column) == ("p1", 0)
    assert loaded[left.turn_id].cost_usd == pytest.approx(0.00031) and loaded[left.turn_id].tokens_estimated
    assert (loaded[left.turn_id].picked, loaded[left.turn_id].vote) == (False, "down")
    assert (loaded[right.turn_id].picked, loaded[right.turn_id].vote) == (True, None)
    assert loaded[right.turn_id].reply == right.reply  # a mark changes nothing else
    assert store.get_session(session).turn_count == 2  # nor adds a turn


def test_an_auto_turn_keeps_its_choice_and_reason(store):  # noqa: F811
    session = store.create_session("alice")
    store.append(session, turn(0, auto=True, auto_reason="Gemma is not reachable"))
    store.append(session, turn(1, auto=True).model_copy(update={"model": "gemma"}))
    [first, second] = store.load(session)
    assert (first.model, first.auto, first.auto_reason) == ("gemini", True, "Gemma is not reachable")
    assert (second.model, second.auto, second.auto_reason) == ("gemma", True, None)


def test_a_vote_taken_back_is_cleared(store):  # noqa: F811
    session = store.create_session("alice")
    once = turn(0)
    store.append(session, once)
    store.mark(session, once.turn_id, picked=None, vote="up")
    store.mark(session, once.turn_id, picked=None, vote=None)
    assert store.load(session)[0].vote is None


def test_marking_an_unknown_turn_is_refused(store):  # noqa: F811
    session = store.create_session("alice")
    with pytest.raises(SessionNotFound):
        store.mark(session, "no-such-turn", picked=None, vote="up")


def test_sqlite_rows_written_before_load_unchanged(tmp_path):
    path = tmp_path / "history.db"
    SqliteStore(path).create_session("alice", "s1")
    old = turn(0, latency_ms=12.5, prompt_tokens=9, completion_tokens=3)
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO turns (session_id, seq, turn_id, turn) VALUES ('s1', 0, ?, ?)",
                   (old.turn_id, json.dumps(as_written_before(old))))
    opened = SqliteStore(path)
    [loaded] = opened.load("s1")
    assert loaded == old  # every earlier field as it was, the new ones at their defaults
    assert (loaded.pair, loaded.picked, loaded.vote, loaded.cost_usd, loaded.tokens_estimated, loaded.auto,
            loaded.auto_reason) == (None, None, None, None, False, False, None)
    opened.mark("s1", old.turn_id, picked=None, vote="up")  # and an old turn takes a vote
    assert opened.load("s1")[0].vote == "up"


def test_firestore_documents_written_before_load_unchanged(firestore_emulator):
    firestore_emulator.reset()
    from hybridchat.store.firestore import FirestoreStore

    opened = FirestoreStore(project=EMULATOR_PROJECT)
    session = opened.create_session("alice")
    old = turn(0, latency_ms=12.5, prompt_tokens=9, completion_tokens=3)
    client = firestore.Client(project=EMULATOR_PROJECT, database="chat-app-db")
    stored = old.model_dump()
    client.collection("chat_sessions").document(session).collection("turns").document(old.turn_id).set(
        {"seq": 0, **{key: value for key, value in stored.items() if key not in LATER_FIELDS}}
    )
    [loaded] = opened.load(session)
    assert loaded == old
    opened.mark(session, old.turn_id, picked=None, vote="down")
    assert opened.load(session)[0].vote == "down"
    client.close()
    opened.close()


def test_a_vote_while_the_database_is_down_is_kept_and_written_after(tmp_path):
    path = tmp_path / "history.db"
    opened = ResilientStore(SqliteStore(path, busy_timeout=0.05), attempts=1, retry_every=3600)
    session = opened.create_session("alice")
    saved, waiting = turn(0), turn(1)
    opened.append(session, saved)
    with locked(path):
        with pytest.raises(StoreUnavailable):
            opened.append(session, waiting)
        with pytest.raises(StoreUnavailable, match="kept"):
            opened.mark(session, saved.turn_id, picked=None, vote="up")
        opened.mark(session, waiting.turn_id, picked=None, vote="down")  # the waiting turn itself takes it
    opened.flush()
    assert [t.vote for t in opened.load(session)] == ["up", "down"]
    assert [t.vote for t in SqliteStore(path).load(session)] == ["up", "down"]
    opened.close()


class _SlowAppend(SqliteStore):
    """Appends that take a while, as Firestore's do: a pick may come while one is under way."""

    def __init__(self, path, writing: threading.Event, go_on: threading.Event):
        super().__init__(path)
        self.writing, self.go_on = writing, go_on

    def append(self, session_id: str, t: Turn) -> None:
        self.writing.set()
        self.go_on.wait(10)
        super().append(session_id, t)


def test_a_pick_while_its_turn_is_being_written_is_written_after_it(tmp_path):
    writing, go_on = threading.Event(), threading.Event()
    opened = ResilientStore(_SlowAppend(tmp_path / "history.db", writing, go_on))
    session = opened.create_session("alice")
    slow = turn(0)
    writer = threading.Thread(target=opened.append, args=(session, slow))
    writer.start()
    assert writing.wait(10)
    opened.mark(session, slow.turn_id, picked=True, vote="up")  # the turn still waits: it takes the mark
    go_on.set()
    writer.join(10)
    opened.flush()
    saved = SqliteStore(tmp_path / "history.db").load(session)
    assert [(t.picked, t.vote) for t in saved] == [(True, "up")], "the mark is not lost with the copy written"
    opened.close()
