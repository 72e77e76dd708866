"""Fit a conversation into the model's context before each call; the store keeps it whole.

* The persona and the new message are always sent; failed turns (no reply) never are.
* When the conversation, with room for a reply, no longer fits, the chat's first turns (up to
  ``HEAD``, 35% of the budget) stay, and the oldest turns after them are dropped in one block,
  down to ``KEEP`` (60%) of the budget. The prompt's beginning (the persona and those first
  turns, what the chat is about) then never changes, and the rest only every several turns, so
  vLLM's prefix cache keeps hitting; dropping one turn at a time would change the prompt after
  the persona every turn (``bench/`` measures both).
* ``max_tokens`` is cut to the room the context leaves.
* A message that does not fit even alone is refused before anything is sent.

Sizes are exact where the model's server counts tokens (vLLM's ``/tokenize``, Gemini's
``countTokens``, the local tokenizer). An upper bound from the text's bytes decides first, so
a chat well inside the context costs no counting call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from hybridchat.backends.base import ChatBackend, ContextWindow, GenerationParams, estimate_tokens
from hybridchat.errors import BackendError, InputRefused
from hybridchat.history import Message
from hybridchat.store import Turn

KEEP, HEAD = 0.6, 0.35
# Room kept for the reply where it shares the context: max_tokens, but no more than an eighth
# of the context (or 64 tokens, where that is more): a long chat is not cut for 4,096 tokens.
_REPLY_SHARE, _MIN_REPLY = 8, 64


@dataclass(frozen=True)
class Fitted:
    """What to send for one turn."""

    start: int  # index of the first turn considered; this model's next turns start here too
    messages: list[Message]  # what to send: the turns kept, then the new message
    not_sent: int  # turns with a reply before ``start``
    params: GenerationParams  # max_tokens cut to the room left
    prompt_tokens: int | None = None  # the prompt's size as we counted it (None: not counted)


def sendable(turn: Turn) -> bool:
    """A turn the model may see again: it has a reply (a failed turn has none)."""
    return turn.status != "error" and bool(turn.reply)


def fit_context(
    backend: ChatBackend,
    turns: Sequence[Turn],
    message: str,
    params: GenerationParams,
    *,
    start: int = 0,
    keep: float = KEEP,
    head: float = HEAD,
    shrink: bool = False,
    overcount: float = 1.0,
) -> Fitted:
    """The turns from ``start`` on that fit ``backend``'s context with ``message``, after the
    chat's first turns (within ``head`` of the budget) once any are left out.

    ``shrink``: the server refused the last fit as too long (its context is smaller than it
    said, or it counts more than we do: ``overcount`` times, where it said how many): drop a
    block whatever our count says. ``InputRefused`` when ``message`` and the persona alone do
    not fit.
    """
    window = backend.context_window()
    pairs = [
        (index, (Message("user", turn.user), Message("assistant", turn.reply)))
        for index, turn in enumerate(turns) if sendable(turn)
    ]
    fitted = _fit(backend, window, pairs, len(turns), message, params, start, keep, 0, shrink, overcount)
    if window is None or head <= 0 or not fitted.not_sent:
        return fitted
    pinned = _first_turns(backend, pairs, params, head * _budget(window, params) / max(overcount, 1.0))
    if not pinned:
        return fitted
    try:
        return _fit(backend, window, pairs, len(turns), message, params, start, keep, pinned, shrink, overcount)
    except InputRefused:  # the message fits without the first turns only
        return fitted


def _first_turns(
    backend: ChatBackend, pairs: list[tuple[int, tuple[Message, Message]]], params: GenerationParams, limit: float
) -> int:
    """How many of the chat's first turns fit in ``limit`` tokens: the same ones every time."""
    count = 0
    for n in range(1, len(pairs)):
        said = [m for _, pair in pairs[:n] for m in pair]
        if estimate_tokens(said, params.system_prompt) > limit:
            try:
                if backend.count_tokens(said, params) > limit:
                    break
            except BackendError:
                break
        count = n
    return count


def _fit(
    backend: ChatBackend, window: ContextWindow | None, sendable_pairs: list[tuple[int, tuple[Message, Message]]],
    turn_count: int, message: str, params: GenerationParams, start: int, keep: float, pinned_turns: int, shrink: bool,
    overcount: float,
) -> Fitted:
    """The fit with the first ``pinned_turns`` sendable turns always sent."""
    pinned = [said for _, pair in sendable_pairs[:pinned_turns] for said in pair]
    pairs = [(index, pair) for index, pair in sendable_pairs[pinned_turns:] if index >= start]
    budget = _budget(window, params) if window is not None else 0.0

    def sent(k: int) -> list[Message]:
        """The messages to send with the pairs from ``k`` on."""
        return [*pinned, *(said for _, pair in pairs[k:] for said in pair), Message("user", message)]

    @cache
    def size(k: int, limit: float) -> tuple[int, bool]:
        """Prompt tokens with the pairs from ``k`` on, and whether counted exactly; the upper
        bound where it is within ``limit``."""
        upper = estimate_tokens(sent(k), params.system_prompt)
        if upper <= limit:
            return upper, False
        try:
            return backend.count_tokens(sent(k), params), True
        except BackendError:  # the count failed, not the chat: the bound is safe, if wasteful
            return upper, False

    def fitted(k: int, prompt: tuple[int, bool]) -> Fitted:
        first = pairs[k][0] if k < len(pairs) else turn_count
        not_sent = sum(1 for index, _ in sendable_pairs if index < first) - pinned_turns
        shrunk = params
        if window is not None and window.includes_reply and prompt[0] + params.max_tokens > window.tokens:
            exact = prompt[0] if prompt[1] else size(k, 0)[0]
            shrunk = params.model_copy(update={"max_tokens": max(1, min(params.max_tokens, window.tokens - exact))})
        counted = prompt[0] if window is not None or shrink else None
        return Fitted(first if k else start, sent(k), not_sent, shrunk, counted)

    if window is None and not shrink:
        return fitted(0, (0, True))
    if window is None:  # the server refused but did not say its limit: drop from what was sent
        budget = float(size(0, 0)[0])
    stated, budget = budget, budget / max(overcount, 1.0)  # ``budget`` in our count's tokens
    if not shrink and (whole := size(0, budget))[0] <= budget:
        return fitted(0, whole)
    alone = size(len(pairs), keep * budget)
    if alone[0] > budget:
        what = f"its context is {window.tokens:,} tokens" if window else "what its server accepts"
        room = ", with room for a reply" if window and window.includes_reply else ""
        raise InputRefused(
            f"That message is {round(alone[0] * max(overcount, 1.0)):,} tokens; {backend.label} takes "
            f"{int(stated):,} at most ({what}{room}). Shorten it, or send it in parts."
        )
    # The fewest turns dropped that bring the prompt within keep × budget (or budget, when the
    # message alone is over that): sizes only shrink as k grows, so bisect.
    target = keep * budget if alone[0] <= keep * budget else budget
    low, high = 1, len(pairs)
    while low < high:
        middle = (low + high) // 2
        if size(middle, target)[0] <= target:
            high = middle
        else:
            low = middle + 1
    return fitted(high, size(high, target))


def _budget(window: ContextWindow, params: GenerationParams) -> float:
    """The prompt's tokens the window leaves room for."""
    if window.includes_reply:
        return window.tokens - min(params.max_tokens, max(_MIN_REPLY, window.tokens // _REPLY_SHARE))
    return float(window.tokens)
