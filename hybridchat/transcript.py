"""A saved chat as Markdown, for ``hybridchat sessions export --format md`` and the page's
download: every reply, both of a side-by-side pair with which one was picked, where Auto sent a
reply and why, the votes and each reply's figures (time, tokens, cost)."""

from __future__ import annotations

import re

from hybridchat.chat_view import figures
from hybridchat.store import SessionSummary, Turn

PICKED = {True: "side by side, picked", False: "side by side, not picked", None: "side by side, no pick"}
THUMBS = {"up": "👍", "down": "👎", None: ""}


def markdown(summary: SessionSummary, turns: list[Turn]) -> str:
    """The chat as a Markdown transcript, a message once before its reply or replies."""
    lines = [f"# {summary.title or summary.session_id}", ""]
    replaced = {turn.replaces for turn in turns}
    asked: set[str] = set()  # a side-by-side message is written once, before its two replies
    for turn in turns:
        if (turn.pair or turn.turn_id) not in asked:
            asked.add(turn.pair or turn.turn_id)
            lines += [f"**You** ({turn.started_at:%Y-%m-%d %H:%M}):", "", turn.user, ""]
        notes = ["asked again: the next reply replaces this one" if turn.turn_id in replaced else "",
                 PICKED[turn.picked] if turn.pair else "", auto_note(turn), THUMBS[turn.vote]]
        said = "; ".join(note for note in notes if note)
        lines += [f"**{turn.model}**{f' _({said})_' if said else ''}:", "", turn.reply or f"_({turn.error})_", ""]
        if figures(turn):
            lines += [f"_{figures(turn)}_", ""]
    return "\n".join(lines)


def auto_note(turn: Turn) -> str:
    """Auto's choice, with its reason when the reply is not the first choice's."""
    if not turn.auto:
        return ""
    return f"Auto, because {turn.auto_reason}" if turn.auto_reason else "Auto"


def file_name(summary: SessionSummary) -> str:
    """``chat-<title words>-<date>.md``: safe on every file system."""
    words = re.sub(r"[^a-z0-9]+", "-", summary.title.lower()).strip("-")[:40].rstrip("-") or "untitled"
    day = f"-{summary.updated_at:%Y-%m-%d}" if summary.updated_at else ""
    return f"chat-{words}{day}.md"
