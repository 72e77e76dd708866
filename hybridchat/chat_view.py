"""What the chat page shows of the models and the turns: the model selector's entries and the
chat's messages, each reply under the name of the model (and whose code) that wrote it."""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hybridchat.backends import ChatBackend
from hybridchat.backends.base import labelled
from hybridchat.chat import Progress
from hybridchat.costs import is_estimate, shown
from hybridchat.sanitize import safe_markdown
from hybridchat.side_by_side import PairProgress
from hybridchat.store import Turn


def model_choices(backends: dict[str, ChatBackend]) -> list[tuple[str, str]]:
    """Selector entries, checked in parallel: an unreachable model stays listed, with why."""
    with ThreadPoolExecutor(max_workers=len(backends)) as pool:
        health = dict(zip(backends, pool.map(lambda b: b.health(), backends.values())))
    return [
        (backend.label if health[name].ok else f"{backend.label}{UNAVAILABLE}{health[name].detail}", name)
        for name, backend in backends.items()
    ]


# The message box opens once the page has loaded, which loses the focus autofocus gave it: this
# gives it back. A page script, not an event's js=: Gradio evaluates that, which the CSP refuses.
FOCUS_THE_BOX_WHEN_OPEN = """<script>
new MutationObserver((_, watching) => {
  const box = document.querySelector("#message textarea");
  if (box && !box.disabled) { box.focus(); watching.disconnect(); }
}).observe(document.documentElement, {subtree: true, childList: true, attributes: true, attributeFilter: ["disabled"]});
</script>"""

UNAVAILABLE = " — unavailable: "
# While a model is unavailable the selector asks again this often, so that a model that has
# finished loading is shown as such without a reload.
RECHECK_SECONDS = 10
PERSONA_ON_YOUR_PATH = (
    "Sent on hybridchat's path only. On your code's path a system prompt is your translators' job (notebook 08)."
)


_MARKS = {"interrupted": "*(interrupted)*", "cut_off": "*(stopped at the max-tokens limit)*"}


ALTERNATIVE = "↔ The other reply, not picked: "  # a side-by-side reply the chat did not go on with


def to_messages(
    turns: list[Turn], pending: Progress | None = None, labels: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """The chat display of saved turns, plus a turn still streaming; each reply under the name
    of the model that wrote it (``labels``: by backend, for turns saved without one). Of a
    side-by-side pair, the reply the chat went on with, and the other collapsed under it; of a
    pair still open (no pick, nothing after it), the message alone: its replies are in columns."""
    return [message for message, _ in _rendered(turns, pending, labels)]


def voted_turn(turns: list[Turn], index: int | tuple[int, int]) -> str | None:
    """The id of the turn whose reply is message ``index`` of ``to_messages(turns)`` (Gradio names
    a voted reply by its first message: a thought, where there is one); ``None`` for a visitor's."""
    ids = [turn_id for _, turn_id in _rendered(turns)]
    at = index if isinstance(index, int) else index[0]
    return ids[at] if 0 <= at < len(ids) else None


def _rendered(
    turns: list[Turn], pending: Progress | None = None, labels: Mapping[str, str] | None = None
) -> list[tuple[dict[str, Any], str | None]]:
    """Each message shown, with the turn whose reply it shows (``None``: the visitor's)."""
    shown: list[tuple[dict[str, Any], str | None]] = []
    pairs: dict[str, list[Turn]] = {}
    for turn in turns:
        if turn.pair is not None:
            pairs.setdefault(turn.pair, []).append(turn)
    for index, turn in enumerate(turns):
        pair = pairs.get(turn.pair or "")
        if pair is not None and turn is not pair[0]:
            continue  # shown with the first of its pair
        if pair is not None and index + len(pair) == len(turns) and all(t.picked is None for t in pair):
            shown.append(({"role": "user", "content": safe_markdown(turn.user)}, None))  # open: in columns
            continue
        chosen = min(pair, key=lambda t: (not t.picked, t.pair_column or 0)) if pair else turn
        label = chosen.model_label or (labels or {}).get(chosen.model, chosen.model)
        label = labelled(label, chosen.auto_reason)
        user, reply = _shown(chosen.user, label, chosen.reply, chosen.notice, _MARKS.get(chosen.status),
                             chosen.error, figures(chosen))
        shown += [(user, None), *((m, chosen.turn_id) for m in _thought(chosen.thought, thinking=False)),
                  (reply, chosen.turn_id)]
        for other in (t for t in pair or [] if t is not chosen):
            other_label = other.model_label or (labels or {}).get(other.model, other.model)
            shown.append(({"role": "assistant", "content": reply_body(other),
                           "metadata": {"title": f"{ALTERNATIVE}{other_label}", "status": "done"}}, other.turn_id))
    if pending is not None:
        user, reply = _shown(pending.message, pending.label, pending.reply, pending.context_note)
        shown += [(user, None), *((m, None) for m in _thought(pending.thought, thinking=not pending.reply)),
                  (reply, None)]
    return shown


def chat_messages(
    turns: list[Turn], backends: Mapping[str, ChatBackend], pending: Progress | PairProgress | None = None,
    began: float = 0.0,
) -> list[dict[str, Any]]:
    """The chat as the page shows it, with the reply under way since ``began`` (by the monotonic
    clock): a pair's replies stream in their columns; a reply begun without text yet says what its
    model is doing, and for how long."""
    labels = {name: backend.label for name, backend in backends.items()}
    if isinstance(pending, PairProgress):
        kept = [turn for turn in turns if turn.pair != pending.pair]
        return [*to_messages(kept, None, labels), {"role": "user", "content": safe_markdown(pending.message)}]
    if pending is not None and not pending.reply and not pending.thought:
        # An Auto reply's label goes on with why it is not Gemma's.
        doing = next((b.waiting for b in backends.values()
                      if pending.label == b.label or pending.label.startswith(f"{b.label} · ")), "")
        return waiting(turns, pending.message, pending.label, doing, time.monotonic() - began, labels)
    return to_messages(turns, pending, labels)


def waiting(
    turns: list[Turn], message: str, label: str, doing: str, seconds: float, labels: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """The chat while the reply to ``message`` has not begun: the message, and under the model's
    line what is under way and for how long."""
    return [*to_messages(turns, None, labels), *_shown(message, label, "", mark=f"⏳ *{doing} ({seconds:.0f} s)*")]


def reply_body(turn: Turn) -> str:
    """A saved reply as shown without its model's line: its text, how it ended, its error, its figures."""
    parts = [safe_markdown(turn.reply), _MARKS.get(turn.status) or "",
             f"⚠️ {safe_markdown(turn.error)}" if turn.error else "", f"<sub>{figures(turn)}</sub>"]
    return "\n\n".join(p for p in parts if p)


def figures(turn: Turn) -> str:
    """The quiet line under a reply: ``0.4 s · 38 tok/s · 812 → 96 tokens · $0.0003``. Tokens
    the server did not report are marked ≈, a cost that is a share of GPU hours "est."."""
    parts = []
    if turn.first_token_ms is not None:
        parts.append(f"{turn.first_token_ms / 1000:.1f} s")
    generating = ((turn.latency_ms or 0) - (turn.first_token_ms or 0)) / 1000
    if turn.completion_tokens and turn.completion_tokens > 1 and generating > 0:
        parts.append(f"{(turn.completion_tokens - 1) / generating:.0f} tok/s")
    if turn.prompt_tokens is not None and turn.completion_tokens is not None:
        about = "≈" if turn.tokens_estimated else ""
        parts.append(f"{about}{turn.prompt_tokens:,} → {about}{turn.completion_tokens:,} tokens")
    if turn.cost_usd is not None:
        parts.append(f"{shown(turn.cost_usd)}{' est.' if is_estimate(turn.model) else ''}")
    return " · ".join(parts)


def _shown(
    message: str, label: str, reply: str, note: str | None = None, mark: str | None = None, error: str | None = None,
    figured: str = "",
) -> list[dict[str, Any]]:
    # Every text shown goes through safe_markdown: replies, servers' error texts and the model
    # names servers report are not ours.
    parts = [model_line(label), f"ℹ️ *{note}*" if note else "", safe_markdown(reply), mark or "",
             f"⚠️ {safe_markdown(error)}" if error else "", f"<sub>{figured}</sub>" if figured else ""]
    return [
        {"role": "user", "content": safe_markdown(message)},
        {"role": "assistant", "content": "\n\n".join(p for p in parts if p)},
    ]


THOUGHT_TITLE = "💭 Thought"


def _thought(thought: str | None, thinking: bool) -> list[dict[str, Any]]:
    """A thinking model's reasoning as Gradio's thought message, above the reply: open while the
    model is still thinking, then collapsed."""
    if not thought:
        return []
    metadata = {"title": THOUGHT_TITLE, "status": "pending" if thinking else "done"}
    return [{"role": "assistant", "content": safe_markdown(thought), "metadata": metadata}]


def model_line(label: str) -> str:
    """The small line over a reply that names the model that wrote it."""
    return f"<sub>{safe_markdown(label)}</sub>"
