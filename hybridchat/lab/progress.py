"""Each checker cell's verdict, kept in ``progress.json`` beside the notebooks (the learner's
workspace) and, in a room, sent to the room's progress service (``hybridchat room serve``).

A verdict is the notebook, the exercise ("03 Gemma"), ✅ or the hint's first line, and the time.
In a room (notebook 00's ``ATTENDEE``, and ``ROOM_URL`` or the room's ``GEMMA_URL``) each one is
also posted, with the display name and the room's key; what is sent is exactly that, never code,
prompts, keys or e-mail addresses. Sending never holds a cell up for more than a couple of
seconds and never stops it: what could not be sent stays marked in ``progress.json`` and goes
with the next verdict.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from hybridchat.lab import workshop
from hybridchat.redact import redact

FILE = "progress.json"
KEPT = 500  # verdicts kept in the file: the newest, and every one not yet sent
SEND_WITHIN = httpx.Timeout(2.0, connect=1.0)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_BEARER = re.compile(r"(?i)\b(bearer\s+)\S+")


def shareable(hint: str, key: str = "") -> str:
    """The hint's first line as the room may see it: no e-mail address, key or secret in a URL.

    >>> shareable("`member` user:ann@example.com is not allowed\\nmore", key="k")
    '`member` user:(an e-mail address) is not allowed'
    """
    line = hint.strip().split("\n", 1)[0][:300]
    if key:
        line = line.replace(key, "***")
    return _BEARER.sub(r"\1***", _EMAIL.sub("(an e-mail address)", redact(line)))


def _workspace(folder: Path | None) -> Path | None:
    """The learner's workspace the notebook runs in, if it runs in one (not the repository's tests)."""
    folder = folder or Path.cwd()
    return folder if (folder / workshop.FILE).exists() or (folder / "my_app").is_dir() else None


def _notebook(exercise: str, folder: Path) -> str:
    """The notebook running: JupyterLab tells the kernel; elsewhere, the exercise's own notebook."""
    running = os.environ.get("JPY_SESSION_NAME", "")
    if running.endswith(".ipynb"):
        return Path(running).stem
    number = exercise.split(" ", 1)[0]
    found = sorted(folder.glob(f"{number}_*.ipynb"))
    return found[0].stem if found else number


def record(exercise: str, passed: bool, hint: str = "", folder: Path | None = None) -> None:
    """Keep the verdict of ``exercise`` (and send it, in a room); nothing outside a workspace."""
    workspace = _workspace(folder)
    if workspace is None:
        return
    path = workspace / FILE
    verdicts = _read(path)
    room = _room(workspace)
    verdicts.append({
        "notebook": _notebook(exercise, workspace), "exercise": exercise, "status": "ok" if passed else "hint",
        "hint": "" if passed else shareable(hint, room[2] if room else ""),
        "time": datetime.now(UTC).isoformat(timespec="seconds"), "sent": False if room else None,
    })
    if room:
        _send(verdicts, *room)
    unsent = [v for v in verdicts if v.get("sent") is False]
    sent = [v for v in verdicts if v.get("sent") is not False]
    path.write_text(json.dumps(sent[-max(KEPT - len(unsent), 0):] + unsent if len(verdicts) > KEPT else verdicts,
                               indent=1, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def verdict(exercise: str, folder: Path | None = None) -> Iterator[None]:
    """Record what the block (a checker) ends in: ✅, or the first line of what it raised."""
    try:
        yield
    except Exception as failed:
        record(exercise, False, str(failed) or type(failed).__name__, folder)
        raise
    record(exercise, True, folder=folder)


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return []  # none yet, or a file broken by hand: started afresh
    return [v for v in found if isinstance(v, dict)] if isinstance(found, list) else []


def _room(workspace: Path) -> tuple[str, str, str] | None:
    """Where to send, as whom and with which key: ``None`` outside a room."""
    try:
        values = workshop.load(workspace)
    except workshop.WorkshopFileInvalid:
        return None
    attendee = values.get("ATTENDEE", "")
    gemma = values.get("GEMMA_URL", "")
    url = values.get("ROOM_URL", "") or (gemma if gemma != workshop.NO_GEMMA else "")
    if not (attendee and url):
        return None
    return url.rstrip("/"), attendee, os.environ.get("HYBRIDCHAT_VLLM_API_KEY", "")


def _send(verdicts: list[dict[str, Any]], url: str, attendee: str, key: str) -> None:
    """Post every verdict not yet sent, oldest first, until one does not go (then the rest wait)."""
    unsent = [v for v in verdicts if v.get("sent") is False]
    if not key:
        print(f"📋 kept for the room's progress page: {len(unsent)} verdict(s); they go once "
              "HYBRIDCHAT_VLLM_API_KEY is set (the room's key).")
        return
    with httpx.Client(timeout=SEND_WITHIN, headers={"Authorization": f"Bearer {key}"}) as http:
        for one in unsent:
            posted = {name: one[name] for name in ("notebook", "exercise", "status", "hint", "time")}
            try:
                answer = http.post(f"{url}/progress", json={"attendee": attendee, **posted})
            except httpx.HTTPError as failed:
                why = type(failed).__name__
                break
            if answer.status_code == 200 or answer.status_code in (400, 413, 422):
                one["sent"] = answer.status_code == 200 or "refused"  # a refused one is never sent again
                continue
            why = f"HTTP {answer.status_code}"
            break
        else:
            return
    waiting = sum(v.get("sent") is False for v in verdicts)
    print(f"📋 the room's progress page did not answer ({why}): {waiting} verdict(s) kept, sent with the next one.")
