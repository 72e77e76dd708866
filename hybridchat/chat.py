"""One chat turn, independent of the UI: clean the input, fit the context, stream the reply,
save the turn.

The conversation's context is the list of saved ``Turn``s, not what the UI shows, so an
error shown in the chat is never sent to a model, and any backend can answer the next turn.
What is sent is fitted to the model's context (``hybridchat.context``); the store keeps all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Generator, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hybridchat.backends import ChatBackend, GenerationParams, ReplyStream
from hybridchat.backends.base import labelled, short_label
from hybridchat.context import HEAD, KEEP, Fitted, fit_context
from hybridchat.costs import Pricing
from hybridchat.errors import (
    BackendError,
    ContextOverflow,
    InputRefused,
    SessionNotFound,
    StoreError,
    refusal_reason,
    too_long_for,
)
from hybridchat.history import Message
from hybridchat.store import HistoryStore, SessionSummary, Turn
from hybridchat.store.base import Vote
from hybridchat.turn_draft import Draft, Pairing, Route

if TYPE_CHECKING:
    from hybridchat.auto import AutoRoute

log = logging.getLogger("hybridchat.turns")

AUTO = "auto"  # the model selector's value for Auto

DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024
DEFAULT_MAX_PERSONA_BYTES = 4 * 1024
# C0 controls except tab and newline, DEL, and lone UTF-16 surrogates (not encodable).
_UNWANTED = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")


def clean_message(text: str | None, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> str:
    """The message without control characters; ``InputRefused`` if empty or too long."""
    cleaned = _cleaned(text)
    if not cleaned.strip():
        raise InputRefused("Type a message first.")
    _refuse_over(cleaned, max_bytes, "That message", "Shorten it or send it in parts.")
    return cleaned


def clean_persona(text: str | None, max_bytes: int = DEFAULT_MAX_PERSONA_BYTES) -> str | None:
    """The persona (system prompt) cleaned as a message is; ``None`` when empty."""
    cleaned = _cleaned(text)
    _refuse_over(cleaned, max_bytes, "The persona", "Shorten it.")
    return cleaned if cleaned.strip() else None


def _cleaned(text: str | None) -> str:
    return _UNWANTED.sub("", (text or "").replace("\r\n", "\n").replace("\r", "\n"))


def _refuse_over(text: str, max_bytes: int, what: str, fix: str) -> None:
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise InputRefused(f"{what} is {size / 1024:.0f} kB; the limit is {max_bytes / 1024:.0f} kB. {fix}")


@dataclass
class Conversation:
    """What one browser tab is chatting in: its session (once saved) and its turns as they
    stand; ``replaced``: the ids of saved turns asked again since (Retry), not among them."""

    owner: str
    session_id: str | None = None
    turns: list[Turn] = field(default_factory=list)
    replaced: set[str] = field(default_factory=set)

    def context(self) -> list[Turn]:
        """The turns a model sees again: of each side-by-side pair, only the reply the chat went
        on with (the picked one; before a pick, the left one)."""
        pairs: dict[str, list[Turn]] = {}
        for turn in self.turns:
            if turn.pair is not None:
                pairs.setdefault(turn.pair, []).append(turn)
        chosen = {pair: min(replies, key=lambda t: (not t.picked, t.pair_column or 0))
                  for pair, replies in pairs.items()}
        return [turn for turn in self.turns if turn.pair is None or chosen[turn.pair] is turn]

    @classmethod
    def of(cls, owner: str, session_id: str, saved: list[Turn], replaced: set[str] | None = None) -> Conversation:
        """The conversation as the saved turns leave it: those asked again (by a later turn, or
        in ``replaced``) left out."""
        replaced = (replaced or set()) | {turn.replaces for turn in saved if turn.replaces}
        return cls(owner, session_id, [turn for turn in saved if turn.turn_id not in replaced], replaced)


@dataclass(frozen=True)
class Progress:
    """The reply so far to ``message`` (as sent: cleaned) from the model ``label`` names;
    ``turn`` is set once it is finished and saved (or kept). ``context_note``: earlier turns
    were left out of the context. ``thought``: the model's reasoning so far, if it thinks."""

    message: str
    reply: str
    label: str
    turn: Turn | None = None
    notice: str | None = None
    context_note: str | None = None
    thought: str | None = None
    handed_back: str | None = None  # why the turn was handed back to Auto, unsaved (``Route.hand_back``)


class ChatService:
    def __init__(
        self,
        backends: dict[str, ChatBackend],
        store: HistoryStore,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_persona_bytes: int = DEFAULT_MAX_PERSONA_BYTES,
        keep: float = KEEP,
        head: float = HEAD,
        stream: bool = True,
        pricing: Pricing | None = None,
        auto: AutoRoute | None = None,
    ):
        if not backends:
            raise ValueError("no backend is configured: set HYBRIDCHAT_BACKENDS")
        self.backends = backends
        self.store = store
        self.max_message_bytes = max_message_bytes
        self.max_persona_bytes = max_persona_bytes
        self.keep, self.head = keep, head  # how the context is fitted (hybridchat.context)
        self.stream = stream  # False: one blocking call per reply, the codelab's design
        self.pricing = pricing  # None: no reply is priced
        self.auto = auto  # the "Auto" entry: Gemma, else Gemini (None: not offered)

    def respond(
        self,
        conversation: Conversation,
        message: str,
        backend_name: str,
        params: GenerationParams,
        *,
        replaces: str | None = None,
        pair: Pairing | None = None,
        route: Route | None = None,
    ) -> Generator[Progress, None, None]:
        """Stream the reply to ``message``; the last ``Progress`` carries the saved turn
        (which ``replaces`` the turn of that id, asked again; ``pair``: one of two replies to
        the same message, side by side, from the context given there; ``route``: how Auto sent
        it). ``backend_name`` ``AUTO``: Auto picks the model.

        ``InputRefused`` (before the reply starts) for a bad message or model, or a message
        too long for the model's context. Backend failures do not raise: they end the turn,
        whose ``error`` says what happened. A prompt the server finds too long for its context
        is fitted again, smaller, and sent once more.
        """
        text = clean_message(message, self.max_message_bytes)
        if backend_name == AUTO and self.auto is not None:
            yield from self.auto.respond(self, conversation, text, params, replaces=replaces)
            return
        backend = self.backends.get(backend_name)
        if backend is None:
            raise InputRefused(f"Unknown model {backend_name!r}; choose one from the list.")
        persona = clean_persona(params.system_prompt, self.max_persona_bytes) if backend.takes_system_prompt else None
        params = params.model_copy(update={"system_prompt": persona, "conversation": _routing_key(conversation)})
        if pair is None:
            self.catch_up(conversation)
        context = pair.context if pair is not None else conversation.context()
        previous = start = self._context_start(context, backend_name)
        draft = Draft(text, backend_name, params, replaces=replaces, pair=pair, route=route)
        hand_back = route is not None and route.hand_back
        label = labelled(backend.label, route.reason if route else None)
        reply: ReplyStream | None = None
        fitted: Fitted | None = None
        refused, overcount = False, 1.0
        try:
            for _ in range(2):
                try:
                    fitted = fit_context(
                        backend, context, text, params, start=start, keep=self.keep, head=self.head,
                        shrink=refused, overcount=overcount,
                    )
                except InputRefused:
                    if not hand_back:
                        raise
                    fitted = None
                if hand_back and (fitted is None or fitted.not_sent):
                    yield Progress(text, "", label, handed_back=too_long_for(short_label(backend.label)))
                    return
                assert fitted is not None
                draft.fitted(fitted, previous, backend.label)
                reply = (backend.stream if self.stream else backend.answer)(fitted.messages, fitted.params)
                try:
                    with closing(reply):  # on Stop too: the model's HTTP stream ends now
                        for piece in reply:
                            draft.add(piece)
                            yield Progress(text, "".join(draft.pieces), label, context_note=draft.notice,
                                           thought=reply.thought or None)
                    break
                except ContextOverflow as exc:
                    if refused or draft.pieces:
                        raise
                    # Shrunk from where the refused fit began, by as much as the server counted more.
                    refused, start, overcount = True, fitted.start, _overcount(exc, fitted)
        except BackendError as exc:
            if hand_back and not draft.pieces:
                yield Progress(text, "", label, handed_back=refusal_reason(short_label(backend.label), exc))
                return
            draft.status, draft.error = ("interrupted" if draft.pieces else "error"), str(exc)
        except GeneratorExit:  # the user pressed Stop
            draft.status = "interrupted"
            self._save(conversation, self._figured(backend, None, draft.turn(backend.label, reply)))
            raise
        # The label now names the model the server serves.
        turn = self._figured(backend, fitted, draft.turn(backend.label, reply))
        yield Progress(text, turn.reply, label, turn, self._save(conversation, turn), turn.notice)

    def retry(
        self, conversation: Conversation, backend_name: str, params: GenerationParams, route: Route | None = None
    ) -> Iterator[Progress]:
        """Ask again for the last reply: the new turn takes its place, in the chat and in what
        any model sees next; the store keeps both (the new one names the one it replaces)."""
        if not conversation.turns:
            raise InputRefused("There is no reply to ask again for yet.")
        last = conversation.turns.pop()
        conversation.replaced.add(last.turn_id)
        try:
            yield from self.respond(conversation, last.user, backend_name, params, replaces=last.turn_id, route=route)
        except InputRefused:  # refused before it began: the last reply stands
            conversation.turns.append(last)
            conversation.replaced.discard(last.turn_id)
            raise

    def _figured(self, backend: ChatBackend, fitted: Fitted | None, turn: Turn) -> Turn:
        """The turn with its tokens (counted with the model's tokenizer where its server reported
        none, and marked so) and its cost."""
        figures: dict[str, object] = {}
        if turn.prompt_tokens is None and turn.reply and fitted is not None:
            try:
                prompt = backend.count_tokens(fitted.messages, fitted.params)
                whole = backend.count_tokens([*fitted.messages, Message("assistant", turn.reply)], fitted.params)
                figures = {"prompt_tokens": prompt, "completion_tokens": max(whole - prompt, 1),
                           "tokens_estimated": True}
            except BackendError as exc:
                log.debug("tokens not counted: %s", exc)
        if self.pricing is not None and turn.status != "error":
            figures["cost_usd"] = self.pricing.cost(
                turn.model, figures.get("prompt_tokens", turn.prompt_tokens),  # type: ignore[arg-type]
                figures.get("completion_tokens", turn.completion_tokens),  # type: ignore[arg-type]
                (turn.latency_ms or 0) / 1000,
            )
        return turn.model_copy(update=figures) if figures else turn

    @staticmethod
    def _context_start(context: list[Turn], backend_name: str) -> int:
        """Where this model's last answered context began: its prompt keeps that beginning."""
        for turn in reversed(context):
            if turn.model == backend_name and turn.context_start is not None and turn.status != "error":
                return turn.context_start
        return 0

    def catch_up(self, conversation: Conversation) -> None:
        """Add the turns saved in this session elsewhere (another tab, another replica) since
        this tab last looked, in the order they were saved: the model sees the whole chat.
        One summary read per turn; the turns are read only when there are new ones."""
        if conversation.session_id is None:
            return
        try:
            stored = self.store.get_session(conversation.session_id).turn_count
            if stored == len(conversation.turns) + len(conversation.replaced):
                return
            saved = self.store.load(conversation.session_id)
        except StoreError:
            return  # the database cannot say now: go on with what this tab has
        saved_ids = {turn.turn_id for turn in saved}
        unsaved = [turn for turn in conversation.turns if turn.turn_id not in saved_ids]
        now = Conversation.of(conversation.owner, conversation.session_id, saved + unsaved, conversation.replaced)
        conversation.turns, conversation.replaced = now.turns, now.replaced

    def vote(self, conversation: Conversation, turn_id: str, vote: Vote | None) -> None:
        """A thumbs up or down (or neither) for a reply of the conversation, saved with its turn;
        ``StoreError`` when it could not be saved yet (ResilientStore keeps it)."""
        for index, turn in enumerate(conversation.turns):
            if turn.turn_id == turn_id:
                conversation.turns[index] = turn.model_copy(update={"vote": vote})
                if conversation.session_id is not None:
                    self.store.mark(conversation.session_id, turn_id, picked=turn.picked, vote=vote)
                return

    def open(self, owner: str, session_id: str) -> Conversation:
        """A saved session of ``owner``'s; ``SessionNotFound`` for anyone else's."""
        if self.store.get_session(session_id).user_id != owner:
            raise SessionNotFound(f"No session {session_id!r}.")
        return Conversation.of(owner, session_id, self.store.load(session_id))

    def sessions(self, owner: str, limit: int) -> list[SessionSummary]:
        """``owner``'s newest ``limit`` sessions, most recent first."""
        return self.store.list_sessions(owner, limit=limit)

    def delete(self, owner: str, session_id: str) -> None:
        self.open(owner, session_id)  # the same ownership check
        self.store.delete_session(session_id)

    def _save(self, conversation: Conversation, turn: Turn) -> str | None:
        """Add ``turn`` to the conversation and the store; a notice if it could not be saved yet."""
        conversation.turns.append(turn)
        notice, session_id = None, conversation.session_id
        try:
            if session_id is None:
                session_id = conversation.session_id = self.store.create_session(conversation.owner)
            self.store.append(session_id, turn)
        except SessionNotFound:
            # Deleted while the reply was on its way: the chat is not brought back.
            conversation.session_id, conversation.turns = None, []
            notice = "This chat was deleted while the reply was on its way, so the reply was not saved."
        except StoreError as exc:
            notice = f"Not saved yet: {exc}"
        log.info(json.dumps({
            "event": "turn",
            "session": session_id,
            "model": turn.model,
            "status": turn.status,
            "latency_ms": turn.latency_ms,
            "first_token_ms": turn.first_token_ms,
            "prompt_tokens": turn.prompt_tokens,
            "completion_tokens": turn.completion_tokens,
            "cost_usd": turn.cost_usd,
            "context_start": turn.context_start,
            "message_chars": len(turn.user),
            "reply_chars": len(turn.reply),
            "saved": notice is None,
        }))
        return notice


def _routing_key(conversation: Conversation) -> str | None:
    """What names the conversation to a model's servers: a digest of its id, not the id itself
    (the key to its saved turns); ``None`` before its first turn is saved."""
    if conversation.session_id is None:
        return None
    return hashlib.sha256(conversation.session_id.encode()).hexdigest()[:16]


def _overcount(refused: ContextOverflow, fitted: Fitted) -> float:
    """How many times more tokens the server counted in the refused prompt than we did."""
    if refused.prompt_tokens and fitted.prompt_tokens:
        return refused.prompt_tokens / fitted.prompt_tokens
    return 1.0
