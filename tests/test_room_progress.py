"""The room's progress service (``hybridchat room serve``): verdicts in with the attendees' key,
the page out with the instructor's, hostile posts bounded, and the store keeping the latest
verdict and since when an attendee is stuck, in SQLite and in the Firestore emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import papermill
import pytest
from conftest import EMULATOR_PROJECT, wait_for
from notebook_runs import execute

from hybridchat.lab import progress, workshop
from hybridchat.lab.local import BackgroundServer, free_port, stop_process
from hybridchat.lab.workspace import prepare
from hybridchat.room_service import MAX_BODY, NEW_NAMES, POSTS_PER_MINUTE, Room, create_app
from hybridchat.store.progress import Standing, open_progress

KEY = "room-key-FAKE-progress-0123456789"
INSTRUCTOR = "instructor-key-FAKE-0123456789"
ATTENDEE = {"Authorization": f"Bearer {KEY}"}
TEACHER = {"Authorization": f"Bearer {INSTRUCTOR}"}
NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


@pytest.fixture
def room(tmp_path):
    board = open_progress(f"sqlite:///{tmp_path}/progress.db")
    with BackgroundServer(create_app(Room(board, KEY, INSTRUCTOR, gemma_url=None))) as url:
        yield url
    board.close()


@contextmanager
def running_room(folder: Path, port: int | None = None) -> Iterator[str]:
    """``hybridchat room serve`` as the instructor starts it, on 127.0.0.1: its URL."""
    url = f"http://127.0.0.1:{port or free_port()}"
    env = {**os.environ, "HYBRIDCHAT_VLLM_API_KEY": KEY, "HYBRIDCHAT_ROOM_INSTRUCTOR_KEY": INSTRUCTOR}
    with (folder / "room-serve.log").open("ab") as log:
        served = subprocess.Popen([sys.executable, "-m", "hybridchat.cli", "room", "serve", "--port",
                                   url.rsplit(":", 1)[1], "--store", f"sqlite:///{folder}/room.db"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: served.poll() is not None or _answers(f"{url}/healthz"), seconds=60)
        assert served.poll() is None, (folder / "room-serve.log").read_text()
        yield url
    finally:
        stop_process(served)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def board_of(url: str) -> dict[tuple[str, str], str]:
    """(attendee, exercise): ✅ or the hint, as the page's table shows them."""
    from html.parser import HTMLParser

    rows: list[list[str]] = []

    class Cells(HTMLParser):
        def handle_starttag(self, tag: str, attrs: object) -> None:
            if tag == "tr":
                rows.append([])
            elif tag in ("td", "th") and rows:
                rows[-1].append("")

        def handle_data(self, data: str) -> None:
            if rows and rows[-1]:
                rows[-1][-1] += data

    Cells().feed(httpx.get(f"{url}/progress/board", headers=TEACHER).json()["board"])
    head, *body = rows
    return {(row[0], exercise): cell for row in body for exercise, cell in zip(head[1:-1], row[1:-1]) if cell}


def post(url: str, headers=ATTENDEE, **verdict) -> httpx.Response:
    return httpx.post(f"{url}/progress", json={"exercise": "03 Gemma", "status": "ok", **verdict}, headers=headers)


def verdict(attendee: str, exercise: str, status: str, minutes: int, hint: str = "") -> Standing:
    at = NOW + timedelta(minutes=minutes)
    return Standing(attendee, exercise, status, hint, "03_history_translators", at, at)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["sqlite", "firestore"])
def test_the_board_keeps_each_attendees_latest_verdict_and_since_when_they_are_stuck(kind, tmp_path, request):
    if kind == "firestore":
        request.getfixturevalue("firestore_emulator").reset()
    board = open_progress(f"sqlite:///{tmp_path}/p.db" if kind == "sqlite" else
                          f"firestore://chat-app-db?project={EMULATOR_PROJECT}")
    try:
        board.record(verdict("ann", "03 Gemma", "hint", 0, "the prompt must end with …"))
        board.record(verdict("ann", "03 Gemma", "hint", 5, "every turn must end with …"))
        board.record(verdict("ann", "03 Gemma", "ok", 2))  # sent late: older than what is kept
        board.record(verdict("bob", "03 Gemma", "ok", 1))
        board.record(verdict("bob", "03 Gemma", "hint", 9, "first difference at character 3"))
        kept = {(s.attendee, s.exercise): s for s in board.standings()}
    finally:
        board.close()
    ann, bob = kept["ann", "03 Gemma"], kept["bob", "03 Gemma"]
    assert (ann.status, ann.hint, ann.since, ann.updated) == (
        "hint", "every turn must end with …", NOW, NOW + timedelta(minutes=5)), "stuck since the first hint"
    assert (bob.status, bob.since) == ("hint", NOW + timedelta(minutes=9)), "stuck since the hint after a pass"
    assert len(kept) == 2, "one standing per attendee and exercise"


def test_a_verdict_needs_the_rooms_key_and_the_page_the_instructors(room):
    assert post(room, headers={}).status_code == 401
    assert post(room, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert post(room, attendee="Ann", status="hint", hint="the prompt must end with `<start_of_turn>model\\n`\n"
                "second line").json() == {"kept": True}
    assert post(room, attendee="Bob", exercise="01 cluster").status_code == 200

    first = httpx.get(room)
    assert first.status_code == 200 and 'name="key"' in first.text and "Ann" not in first.text, "a sign-in form"
    refused = httpx.get(f"{room}/progress", headers=ATTENDEE)
    assert refused.status_code == 401 and "The attendees&#x27; key does not open this page" in refused.text
    assert httpx.get(f"{room}/progress/board", headers=ATTENDEE).status_code == 401
    page = httpx.get(room, headers=TEACHER)
    assert page.status_code == 200 and "Ann" in page.text and "Bob" in page.text
    assert "💡 0 min" in page.text and "the prompt must end with" in page.text and "second line" not in page.text
    assert page.text.index("Ann") < page.text.index("Bob"), "the one stuck first"
    assert "The room&#x27;s Gemma: not named (--gemma-url)." in page.text, "the header's load line"

    with httpx.Client(base_url=room) as browser:
        wrong = browser.post("/progress/login", data={"key": KEY})
        assert wrong.status_code == 401 and "attendees&#x27; key" in wrong.text
        signed = browser.post("/progress/login", data={"key": INSTRUCTOR}, follow_redirects=True)
        assert signed.status_code == 200 and "Ann" in signed.text
        assert INSTRUCTOR not in str(browser.cookies), "the cookie is not the key"
        assert "Ann" in browser.get("/progress/board").json()["board"]


def test_hostile_posts_get_one_line_each_and_the_board_keeps_only_what_is_valid(room):
    not_json = httpx.post(f"{room}/progress", content=b"{not json", headers=ATTENDEE)
    assert not_json.status_code == 400 and not_json.json() == {"error": "the body is not JSON"}
    huge = httpx.post(f"{room}/progress", json={"attendee": "x", "exercise": "03", "status": "ok",
                                                "hint": "h" * MAX_BODY}, headers=ATTENDEE)
    assert huge.status_code == 413
    chunked = httpx.post(f"{room}/progress", content=(b"x" * 1024 for _ in range(64)), headers=ATTENDEE)
    assert chunked.status_code == 413, "a body with no length is cut off at the limit too"
    for bad, where in (({"status": "done"}, "status"), ({"exercise": "<img src=x>"}, "exercise"),
                       ({"attendee": ""}, "attendee"), ({"attendee": "a" * 61}, "attendee")):
        answer = post(room, **{"attendee": "Eve", **bad})
        assert answer.status_code == 422 and answer.json()["error"].startswith(where), answer.json()
    assert post(room, attendee=["a list"]).status_code == 422
    hostile = "<script>alert(1)</script>\x1b[2J\x1b]8;;http://evil\x07Eve\u202e"
    assert post(room, attendee=hostile, status="hint", hint="<b>bold</b>\x1b[31m").status_code == 200
    page = httpx.get(room, headers=TEACHER).text
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "\x1b" not in page and "\\x1b[2J" in page and "\\u202e" in page, "escapes shown, not acted on"
    assert "&lt;b&gt;bold&lt;/b&gt;\\x1b[31m" in page
    assert page.count("<tr>") == 2, "the header and Eve's row: nothing refused was kept"


def test_a_flood_from_one_address_is_bounded_and_other_attendees_posts_are_kept(room):
    with httpx.Client(headers=ATTENDEE) as http:
        def send(name: str, **more) -> int:
            return http.post(f"{room}/progress", json={"attendee": name, "exercise": "03 Gemma", "status": "ok",
                                                         **more}).status_code
        assert send("Ann") == 200
        flood = [send("Mallory") for _ in range(500)]  # one name, as fast as it goes
        flood += [send(f"Mallory {i}") for i in range(500)]  # a new name each time
        later = [send("Ann", exercise=f"0{i} check") for i in range(5)]
    assert flood[:POSTS_PER_MINUTE] == [200] * POSTS_PER_MINUTE and flood.count(200) <= POSTS_PER_MINUTE + NEW_NAMES
    assert set(flood[POSTS_PER_MINUTE:500]) == {429}
    assert later == [200] * 5, "an attendee already in the room is not refused for another's flood"
    page = httpx.get(room, headers=TEACHER).text
    assert page.count("<tr>") <= 2 + NEW_NAMES and "0" + "4 check" in page


@pytest.mark.slow
def test_room_serve_refuses_to_start_without_two_keys():
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCHAT_")}
    for keys in ({}, {"HYBRIDCHAT_VLLM_API_KEY": KEY}, {"HYBRIDCHAT_VLLM_API_KEY": KEY,
                                                         "HYBRIDCHAT_ROOM_INSTRUCTOR_KEY": KEY}):
        ran = subprocess.run([sys.executable, "-m", "hybridchat.cli", "room", "serve", "--port", str(free_port())],
                             env={**env, **keys}, capture_output=True, text=True, timeout=60)
        assert ran.returncode == 2 and "needs two keys" in ran.stderr and "Traceback" not in ran.stderr


def test_a_verdict_is_kept_while_the_room_is_offline_and_sent_with_the_next(tmp_path, monkeypatch, capsys):
    port = free_port()
    (tmp_path / "my_app").mkdir()
    workshop.save(tmp_path, ATTENDEE="Ann", ROOM_URL=f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HYBRIDCHAT_VLLM_API_KEY", KEY)
    progress.record("03 Gemma", False, f"`process_message_gemma` said Bearer {KEY} to ann@example.com\nline 2",
                    tmp_path)
    assert "did not answer (ConnectError): 1 verdict(s) kept" in capsys.readouterr().out
    kept = json.loads((tmp_path / progress.FILE).read_text())
    assert [(v["exercise"], v["status"], v["sent"]) for v in kept] == [("03 Gemma", "hint", False)]
    assert kept[0]["hint"] == "`process_message_gemma` said Bearer *** to (an e-mail address)", "no key, no e-mail"
    board = open_progress(f"sqlite:///{tmp_path}/progress.db")
    with BackgroundServer(create_app(Room(board, KEY, INSTRUCTOR, None)), port=port):
        progress.record("03 Gemini", True, folder=tmp_path)
        standings = {s.exercise: s for s in board.standings()}
    board.close()
    assert {e: (s.attendee, s.status) for e, s in standings.items()} == {
        "03 Gemma": ("Ann", "hint"), "03 Gemini": ("Ann", "ok")}, "the kept one went first"
    assert standings["03 Gemma"].hint == kept[0]["hint"]
    assert all(v["sent"] is True for v in json.loads((tmp_path / progress.FILE).read_text()))


def test_outside_a_workspace_a_checker_records_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    progress.record("03 Gemma", True)
    assert not (tmp_path / progress.FILE).exists(), "the repository's tests, or any folder, are left as they were"


@pytest.mark.slow
def test_the_page_signs_in_shows_names_escaped_and_updates_live_in_chromium(room, browser):
    assert post(room, attendee="<i>Ann</i>", status="hint", hint="expected the roles ['user']").status_code == 200
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(room)
    page.fill("input[name=key]", INSTRUCTOR)
    page.click("button[type=submit]")
    page.wait_for_selector("#board table")
    assert page.locator("tbody th").first.inner_text() == "<i>Ann</i>", "the name as text, not markup"
    assert "expected the roles ['user']" in page.inner_text("#board")
    assert post(room, attendee="Bob", exercise="04 Gemini").status_code == 200
    wait_for(lambda: "Bob" in page.inner_text("#board"), seconds=15)
    assert "04 Gemini" in page.inner_text("#board thead"), "a new column, without a reload"
    assert not errors, errors
    page.close()


@pytest.mark.slow
def test_verdicts_of_checker_cells_papermill_runs_reach_room_serve_and_wait_while_it_is_down(lab_env, tmp_path,
                                                                                            monkeypatch):
    """Notebook 03 as given (its TODOs) while the room is down, then 01 once it is up: 03's hint
    went with 01's verdicts."""
    workspace = tmp_path / "workspace"
    prepare(workspace)
    port = free_port()
    workshop.save(workspace, ATTENDEE="Ann", ROOM_URL=f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HYBRIDCHAT_VLLM_API_KEY", KEY)
    with pytest.raises(papermill.PapermillExecutionError, match="❌"):
        execute(workspace / "03_history_translators.ipynb", tmp_path / "03.ipynb", MODE="local")
    waiting = json.loads((workspace / progress.FILE).read_text())
    assert [(v["exercise"], v["status"], v["sent"]) for v in waiting] == [("03 Gemma", "hint", False)]
    with running_room(tmp_path, port) as url:
        with pytest.raises(papermill.PapermillExecutionError, match="❌"):
            execute(workspace / "01_provision_infra.ipynb", tmp_path / "01.ipynb", MODE="local")
        board = board_of(url)
    assert board[("Ann", "03 Gemma")].startswith("💡 ") and "is not written yet" in board[("Ann", "03 Gemma")]
    assert set(board) == {("Ann", "03 Gemma"), ("Ann", "01 cluster")} and board[("Ann", "01 cluster")].startswith("💡")
    assert "Create a GKE Autopilot cluster" in board[("Ann", "01 cluster")], "the hint's first line"
