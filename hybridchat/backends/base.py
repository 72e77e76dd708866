"""The one interface every model backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import tenacity
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hybridchat.errors import BackendError, BackendUnavailable, InputRefused
from hybridchat.history import Message, conversation, openai_messages

if TYPE_CHECKING:
    from hybridchat.config import Settings

T = TypeVar("T")

CONVERSATION_HEADER = "X-Hybridchat-Conversation"


class GenerationParams(BaseModel):
    """Sampling options for one turn; the defaults are the codelab's slider defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    temperature: float = Field(default=0.9, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=1024, ge=1, le=8192)
    system_prompt: str | None = None
    stop: tuple[str, ...] = ()
    # Which conversation the turn is of, opaque (never saved with the turn): Gemma's server gets it
    # as CONVERSATION_HEADER, for a balancer in front of replicas to keep a chat on one (bench/).
    conversation: str | None = Field(default=None, exclude=True)

    @classmethod
    def checked(cls, **values: Any) -> GenerationParams:
        """``GenerationParams(**values)``, or ``InputRefused`` saying which setting is wrong."""
        try:
            return cls(**values)
        except ValidationError as exc:
            wrong = "; ".join(f"{'.'.join(map(str, e['loc'])).replace('_', ' ')}: {e['msg']}" for e in exc.errors())
            raise InputRefused(f"A setting is not valid ({wrong}).") from None


@dataclass(frozen=True)
class RetryPolicy:
    """When every backend asks a model again: a refused connection, or an answer with one of
    ``statuses`` (quota, still loading, server errors), before any of the reply has come.
    Never a timeout: a model that took ``timeout`` seconds is busy, and asking again would
    multiply the wait."""

    attempts: int = 3
    backoff: float = 1.0  # the first wait, doubled each time (at most 30 s)
    statuses: tuple[int, ...] = (408, 429, 500, 502, 503, 504)

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.retry_attempts, settings.retry_backoff, settings.retry_statuses)

    def is_transient(self, exc: BaseException) -> bool:
        if not isinstance(exc, BackendError):
            return False
        if exc.status_code is None:
            return isinstance(exc, BackendUnavailable)
        return exc.status_code in self.statuses

    def call(self, attempt: Callable[[], T]) -> T:
        """``attempt()``, tried again while it raises a transient ``BackendError``."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(self.is_transient),
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_exponential(multiplier=self.backoff, max=30),
            reraise=True,
        )
        return retrying(attempt)


@dataclass(frozen=True)
class Usage:
    """Token counts a backend reported for one reply."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Finish:
    """Why a reply ended, as the model's server said: ``"stop"`` or ``"length"`` (max tokens)."""

    reason: str


@dataclass(frozen=True)
class Thought:
    """A piece of a thinking model's reasoning before its answer (Gemma 4's thought channel):
    shown apart, saved apart, never part of the answer nor sent back as history."""

    text: str


class ReplyStream(Iterator[str]):
    """A reply's text pieces; once exhausted, ``usage`` holds the token counts the backend
    reported and ``finish_reason`` why it ended (each ``None`` when not reported). Wraps a
    generator that yields the pieces and, at the end, a ``Usage`` and a ``Finish``.

    A ``Thought`` it yields goes to ``thought`` and comes out as an empty piece, so that a
    consumer can show the thought as it grows."""

    def __init__(self, pieces: Iterator[str | Thought | Usage | Finish]):
        self._pieces = pieces
        self._thought: list[str] = []
        self.usage: Usage | None = None
        self.finish_reason: str | None = None

    def __next__(self) -> str:
        while True:
            item = next(self._pieces)
            if isinstance(item, Usage):
                self.usage = item
            elif isinstance(item, Finish):
                self.finish_reason = item.reason
            elif isinstance(item, Thought):
                self._thought.append(item.text)
                return ""
            else:
                return item

    @property
    def thought(self) -> str:
        """The reasoning so far; ``""`` when the model wrote none."""
        return "".join(self._thought)

    @classmethod
    def whole(
        cls, text: str, usage: Usage | None, finish_reason: str | None, thought: str | None = None
    ) -> ReplyStream:
        """A reply that came in one answer, as a stream of one piece (after its thought, if any)."""
        return cls(iter([*([Thought(thought)] if thought else []), text, *([usage] if usage else []),
                         *([Finish(finish_reason)] if finish_reason else [])]))

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()


@dataclass(frozen=True)
class ContextWindow:
    """How many tokens a model takes in one call. ``includes_reply``: the reply's tokens count
    against it too (vLLM's ``max_model_len``), not only the prompt's (Gemini's input limit)."""

    tokens: int
    includes_reply: bool = True


# Per message: the chat template's markers (role, turn start and end); per prompt: a default
# system prompt some templates add (SmolLM2's is 21 tokens) and the reply's opening.
_MESSAGE_OVERHEAD, _PROMPT_OVERHEAD = 8, 64


def estimate_tokens(messages: Sequence[Message], system_prompt: str | None = None) -> int:
    """An upper bound on the prompt's tokens without a tokenizer: every token of a byte-level
    BPE or SentencePiece vocabulary covers at least one byte of text.

    >>> estimate_tokens(conversation("Hi", [["Hello", "Hi there"]]))  # 15 bytes, 3 messages
    103
    """
    rendered = openai_messages(messages, system_prompt)
    return sum(len(m["content"].encode("utf-8")) + _MESSAGE_OVERHEAD for m in rendered) + _PROMPT_OVERHEAD


def short_label(label: str) -> str:
    """A model's label without what its server serves or where it runs.

    >>> short_label("Gemma (google/gemma-3-12b-it)"), short_label("Gemini 2.5 Flash · your code")
    ('Gemma', 'Gemini 2.5 Flash')
    """
    return label.split(" (")[0].split(" · ")[0]


def labelled(label: str, reason: str | None) -> str:
    """A reply's model line with why that model answered (Auto's reason), where there is one.

    >>> labelled("Gemini 2.5 Flash", "Gemma is not reachable"), labelled("Gemma", None)
    ('Gemini 2.5 Flash · Gemma is not reachable', 'Gemma')
    """
    return f"{label} · {reason}" if reason else label


@dataclass(frozen=True)
class BackendHealth:
    """Whether a backend can answer now, and if not, why (fit to show a user)."""

    ok: bool
    detail: str
    model: str | None = None


class ChatBackend(ABC):
    """A model that answers a chat turn, streamed.

    Usage::

        backend = build_backends(Settings())["gemini"]
        for piece in backend.stream(conversation("Hi!"), GenerationParams()):
            print(piece, end="")

    The seam is typed: the conversation as ``Message``s, the new one last, and the persona in
    ``params.system_prompt``; a learner's looser history shapes are taken by ``complete`` and
    the ``call_*`` functions only. Subclasses implement ``stream`` and ``health``; errors they
    raise are ``hybridchat.errors.BackendError``s whose text can be shown to the user as is.
    """

    #: registry key, e.g. ``"gemma"``
    name: str
    #: readable name for a model selector, e.g. ``"Gemini 2.5 Flash (Vertex AI)"``
    label: str
    #: the max-tokens slider's start for this model (the codelab's 1024)
    default_max_tokens: int = 1024
    #: whether ``params.system_prompt`` (the persona box) is sent; a learner's translators add their own
    takes_system_prompt: bool = True
    #: what the page says is under way until the reply begins
    waiting: str = "waiting for the reply"

    @abstractmethod
    def stream(self, messages: Sequence[Message], params: GenerationParams) -> ReplyStream:
        """The reply to ``messages``, piece by piece; once exhausted it holds the token counts
        and finish reason the backend reported. Closing it stops the reply."""

    def answer(self, messages: Sequence[Message], params: GenerationParams) -> ReplyStream:
        """The reply from one blocking call, as a stream of one piece (``HYBRIDCHAT_STREAM=false``:
        the codelab's design). Backends whose API answers whole override this gathered stream."""
        with closing(self.stream(messages, params)) as reply:
            text = "".join(reply)
        return ReplyStream.whole(text, reply.usage, reply.finish_reason, reply.thought)

    def complete(self, message: Any, history: Iterable[Any] = (), params: GenerationParams | None = None) -> str:
        """The whole reply to ``message`` after ``history`` (any shape a notebook has) at once."""
        return "".join(self.stream(conversation(message, history), params or GenerationParams()))

    @abstractmethod
    def health(self) -> BackendHealth:
        """Check reachability without generating anything; never raises."""

    def context_window(self) -> ContextWindow | None:
        """The model's context length, when known (``None``: the server's refusal tells)."""
        return None

    def count_tokens(self, messages: Sequence[Message], params: GenerationParams) -> int:
        """Tokens of this turn's prompt: exact where the model's server counts them, else
        ``estimate_tokens``. May raise ``BackendError``."""
        return estimate_tokens(messages, params.system_prompt)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {self.label}>"
