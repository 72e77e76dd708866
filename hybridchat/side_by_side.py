"""One message to two models at once, both replies streaming, then a pick: ``respond_pair`` and
``pick``.

Both replies are given the same context, taken before either is saved, and each is saved as a
turn of the pair (``Turn.pair``, ``pair_column``). The picked one continues the chat: only it is
in ``Conversation.context()`` from then on; the other stays saved and shown, and no model sees it
again. A message sent before a pick goes on with the left reply, and no pick is counted. A
model that fails or refuses ends its own column with its message; the other goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from hybridchat.backends import GenerationParams
from hybridchat.chat import ChatService, Conversation, Progress, clean_message
from hybridchat.errors import InputRefused, StoreError
from hybridchat.store import Turn
from hybridchat.store.base import new_id
from hybridchat.turn_draft import Pairing

log = logging.getLogger(__name__)

SIDE_BY_SIDE = "side_by_side"  # the model selector's value for it
_DONE = object()


@dataclass(frozen=True)
class PairProgress:
    """Both replies so far: each column's ``Progress`` (``None`` until its first piece), or the
    reason it could not be asked."""

    message: str
    pair: str
    columns: tuple[Progress | None, Progress | None]
    refused: tuple[str | None, str | None] = (None, None)

    @property
    def finished(self) -> bool:
        """Both columns ended: saved, or refused."""
        return all(bool(r) or (p is not None and p.turn is not None)
                   for p, r in zip(self.columns, self.refused, strict=True))


def open_pair(conversation: Conversation) -> list[Turn]:
    """The newest pair, by column, while no pick was made and the chat has not gone on from it."""
    if not conversation.turns or conversation.turns[-1].pair is None:
        return []
    pair = conversation.turns[-1].pair
    members = sorted((t for t in conversation.turns if t.pair == pair), key=lambda t: t.pair_column or 0)
    return [] if any(t.picked is not None for t in members) else members


def respond_pair(
    service: ChatService, conversation: Conversation, message: str, names: tuple[str, str],
    params: GenerationParams, *, replaces: tuple[str | None, str | None] = (None, None),
) -> Iterator[PairProgress]:
    """Stream both replies to ``message`` at once; closing it (Stop) stops both, each saved as
    far as it came. ``InputRefused`` before either starts for an empty or too long message or
    an unknown model."""
    text = clean_message(message, service.max_message_bytes)
    unknown = [name for name in names if name not in service.backends]
    if unknown:
        raise InputRefused(f"Unknown model {unknown[0]!r}; choose one from the list.")
    service.catch_up(conversation)
    if conversation.session_id is None:  # made once here: both replies would each make one
        try:
            conversation.session_id = service.store.create_session(conversation.owner)
        except StoreError as exc:
            log.info("side by side: no session yet (%s); the first reply saved makes it", exc)
    context, pair = conversation.context(), new_id()
    updates: queue.Queue[tuple[int, object]] = queue.Queue()
    stop = threading.Event()

    def run(column: int) -> None:
        stream = service.respond(conversation, text, names[column], params, replaces=replaces[column],
                                 pair=Pairing(pair, column, context))
        try:
            for progress in stream:
                updates.put((column, progress))
                if stop.is_set():
                    stream.close()  # saved as interrupted, as far as it came
                    break
        except InputRefused as exc:  # this model only: e.g. the message does not fit its context
            updates.put((column, exc))
        except Exception as exc:  # a column's failure never ends the other
            log.exception("side by side: column %d failed", column)
            updates.put((column, exc))
        finally:
            updates.put((column, _DONE))

    workers = [threading.Thread(target=run, args=(column,), name=f"pair-{column}", daemon=True) for column in (0, 1)]
    for worker in workers:
        worker.start()
    columns: list[Progress | None] = [None, None]
    refused: list[str | None] = [None, None]
    running = 2
    try:
        while running:
            column, update = updates.get()
            if update is _DONE:
                running -= 1
                continue
            if isinstance(update, Progress):
                columns[column] = update
            else:
                refused[column] = str(update) if isinstance(update, InputRefused) else "This model failed to answer."
            yield PairProgress(text, pair, (columns[0], columns[1]), (refused[0], refused[1]))
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=10)


def retry_pair(
    service: ChatService, conversation: Conversation, params: GenerationParams
) -> Iterator[PairProgress]:
    """Ask both models of the newest pair again: the new pair takes its place, in the chat and in
    what any model sees next; the store keeps both (each new reply names the one it replaces)."""
    last = conversation.turns[-1].pair if conversation.turns else None
    members = sorted((t for t in conversation.turns if t.pair == last), key=lambda t: t.pair_column or 0)
    if last is None or len(members) != 2 or {t.pair for t in conversation.turns[-2:]} != {last}:
        raise InputRefused("There is no side-by-side reply to ask again for.")
    del conversation.turns[-2:]
    conversation.replaced |= {t.turn_id for t in members}
    try:
        yield from respond_pair(service, conversation, members[0].user, (members[0].model, members[1].model), params,
                                replaces=(members[0].turn_id, members[1].turn_id))
    except InputRefused:  # refused before it began: the pair stands
        conversation.turns += members
        conversation.replaced -= {t.turn_id for t in members}
        raise


def pick(service: ChatService, conversation: Conversation, turn_id: str) -> Turn:
    """Continue the chat with the reply ``turn_id`` of the open pair: it is picked, the other is
    not (a vote each); ``InputRefused`` when that pair is no longer open."""
    members = open_pair(conversation)
    if turn_id not in {t.turn_id for t in members}:
        raise InputRefused("That pair is closed: the chat went on from it already.")
    chosen = next(t for t in members if t.turn_id == turn_id)
    for member in members:
        picked = member.turn_id == turn_id
        index = conversation.turns.index(member)
        conversation.turns[index] = member.model_copy(update={"picked": picked})
    for member in members:  # after the conversation is set: a store that is down keeps the marks
        if conversation.session_id is not None:
            service.store.mark(conversation.session_id, member.turn_id, picked=member.turn_id == turn_id,
                               vote=member.vote)
    return chosen
