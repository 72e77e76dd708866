"""``hybridchat room results``: the room's chats, each attendee's Firestore (the emulator, one
project each) and any store by URL, in one table of speed, cost, thumbs and picks; a store that
cannot be read is said, and the rest still counted."""

from __future__ import annotations

import subprocess
import sys

from conftest import api_key_client

from hybridchat.backends import GenerationParams, VllmBackend, VllmClient
from hybridchat.backends.gemini import GeminiBackend
from hybridchat.chat import ChatService, Conversation
from hybridchat.costs import Pricing
from hybridchat.side_by_side import pick, respond_pair
from hybridchat.store import open_store

PROMPT = "Name a secret colour."


def chats(stand_in: str, url: str, picks: list[int]) -> list[str]:
    """One side-by-side turn per entry of ``picks``, the column picked, as the page makes them;
    the picked models, in order."""
    backends = {"gemma": VllmBackend(VllmClient(stand_in), label="Gemma"),
                "gemini": GeminiBackend(api_key_client(stand_in), label="Gemini")}
    store = open_store(url)
    service = ChatService(backends, store, pricing=Pricing("gemini-2.5-flash", {"gemini-2.5-flash": (0.3, 2.5)}, 1.12))
    won = []
    for column in picks:
        chat = Conversation("visitor:attendee")
        *_, done = respond_pair(service, chat, PROMPT, ("gemma", "gemini"), GenerationParams(max_tokens=4))
        won.append(pick(service, chat, done.columns[column].turn.turn_id).model)
    service.vote(chat, done.columns[column].turn.turn_id, "up")
    store.close()
    return won


def saved(url: str) -> list[list[tuple]]:
    """Each saved session's turns, as model, status, pair column and pick: what a failure shows."""
    store = open_store(url, resilient=False)
    try:
        return [[(t.model, t.status, t.pair_column, t.picked, t.turn_id) for t in store.load(s.session_id)]
                for s in store.list_sessions(None)]
    finally:
        store.close()


def test_room_results_counts_every_attendees_picks_and_says_which_store_it_could_not_read(
        stand_in, firestore_emulator, tmp_path):
    firestore_emulator.reset()
    won = chats(stand_in, "firestore://chat-app-db?project=attendee-one", [0, 0, 1])
    won += chats(stand_in, "firestore://chat-app-db?project=attendee-two", [0])
    won += chats(stand_in, f"sqlite:///{tmp_path}/laptop.db", [1])
    room = tmp_path / "room.txt"
    room.write_text("attendee-one\n# attendee-three left early\nattendee-two\n")
    done = subprocess.run(
        [sys.executable, "-m", "hybridchat.cli", "room", "results", "--projects", str(room),
         "--store", f"sqlite:///{tmp_path}/laptop.db", "--store", f"sqlite:///{tmp_path}"],
        capture_output=True, text=True, timeout=120)
    said = done.stdout
    assert done.returncode == 1, "a store could not be read: said in the exit status"
    one, two = "firestore://chat-app-db?project=attendee-one", "firestore://chat-app-db?project=attendee-two"
    assert f"== {one}: 6 turns, 3 picks" in said, (said, saved(one))
    assert f"== {two}: 2 turns, 1 picks" in said, (said, saved(two))
    assert f"== sqlite:///{tmp_path}: could not read it: The history file" in said
    assert "Over 3 of 4 stores: 10 turns, 5 picks." in said
    gemma = won.count("gemma")
    assert f"gemma was picked in {gemma} of 5 ({gemma / 5:.0%}; 95% interval" in said
    assert "thumbs_up" in said and "usd_per_1000_turns" in said
    assert PROMPT not in said and "secret" not in done.stderr, "numbers only: never a prompt"


def test_room_results_needs_a_store_to_read(tmp_path):
    done = subprocess.run([sys.executable, "-m", "hybridchat.cli", "room", "results"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--projects FILE" in done.stderr
