"""Errors whose ``str()`` is fit to show a workshop user, with no stack trace.

    HybridChatError
    ├── InputRefused             a message or setting refused before the reply starts
    ├── SignInRefused            a request IAP did not sign (``hybridchat.iap``)
    ├── SecretMissing            no session secret where one is required (``hybridchat.visitors``)
    ├── BackendError             a model could not answer (the text names which)
    │   ├── BackendUnavailable   nothing listens at its address
    │   ├── BackendLoading       up, but the model is still loading (HTTP 503)
    │   ├── BackendTimeout       no answer in time
    │   ├── BackendRejected      the request was refused (4xx other than quota)
    │   │   ├── ContextOverflow  the prompt does not fit the model's context
    │   │   └── ModelNotFound    the server does not serve the model asked for
    │   ├── QuotaExceeded        rate limit or quota (HTTP 429)
    │   ├── ContentBlocked       a safety filter blocked the prompt or the reply
    │   ├── EmptyResponse        an answer with no text in it
    │   ├── BadResponse          an answer that does not follow the protocol, or a 5xx
    │   ├── NeedsCredentials     no project, key or credentials configured
    │   └── LearnerCodeFailed    a learner's function raised, hung or returned the wrong thing
    └── StoreError               the history database failed
        ├── StoreUnavailable     it cannot be reached; turns wait in memory
        └── SessionNotFound      no session has that id
"""

from __future__ import annotations

from typing import Any

from hybridchat.redact import redact


class HybridChatError(Exception):
    """Base of every error hybridchat raises on purpose."""


class InputRefused(HybridChatError):
    """The message or a setting was refused; the text says why."""


class SignInRefused(HybridChatError):
    """A request without a valid IAP assertion (``hybridchat.iap``); ``status`` is the HTTP
    answer (403, or 503 while sign-in cannot be checked)."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message)
        self.status = status


class SecretMissing(HybridChatError):
    """No session secret is configured where one is required (``hybridchat.visitors``)."""


class BackendError(HybridChatError):
    """A model backend could not produce an answer."""

    def __init__(self, message: str, *, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class BackendUnavailable(BackendError):
    """The backend cannot be reached."""


class BackendLoading(BackendError):
    """The backend answers but its model is still loading."""


class BackendTimeout(BackendError):
    """The backend did not answer within the timeout."""


class BackendRejected(BackendError):
    """The backend refused the request (a client error)."""


class ContextOverflow(BackendRejected):
    """The prompt (with room for the reply) is longer than the model's context.

    ``limit`` is the context length in tokens when the server said it, ``prompt_tokens`` the
    prompt's size when it counted it."""

    def __init__(
        self, message: str, *, limit: int | None = None, prompt_tokens: int | None = None, **kwargs: Any
    ):
        super().__init__(message, **kwargs)
        self.limit = limit
        self.prompt_tokens = prompt_tokens


class ModelNotFound(BackendRejected):
    """The server does not serve the model named in the request (HTTP 404)."""


class QuotaExceeded(BackendError):
    """The backend's quota or rate limit was hit."""


class ContentBlocked(BackendError):
    """A safety filter blocked the prompt or the reply."""


class EmptyResponse(BackendError):
    """The backend answered without any text."""


class BadResponse(BackendError):
    """The backend's answer broke its protocol, or it failed with a server error."""


class NeedsCredentials(BackendError):
    """The backend lacks a project, an API key or credentials."""


class LearnerCodeFailed(BackendError):
    """A learner's translator or caller (``hybridchat.learner``) did not give what the app needs;
    the text names the function, its file and line, what went wrong and how to fix it."""


class StoreError(HybridChatError):
    """The history store failed."""


class StoreUnavailable(StoreError):
    """The history store cannot be reached; unsaved turns are kept in memory."""


class SessionNotFound(StoreError):
    """No session has the given id."""


def status_error(model: str, status: int, detail: str | None = None) -> BackendError:
    """The error for an HTTP error status from ``model``'s API (``"Gemma"``), worded for the user."""
    said = f": {shorten(detail)}" if detail else ""
    if status == 429:
        return QuotaExceeded(
            f"{model} is over its quota or rate limit (HTTP 429). Wait a minute, or switch model.",
            status_code=status,
        )
    if status in (401, 403):
        return NeedsCredentials(
            f"{model} refused the credentials (HTTP {status}){said}", status_code=status
        )
    if 400 <= status < 500:
        return BackendRejected(
            f"{model} refused the request (HTTP {status}){said}", status_code=status
        )
    return BadResponse(
        f"{model} failed with a server error (HTTP {status}). Try again, or switch model.",
        status_code=status,
    )


def refusal_reason(model: str, exc: BackendError) -> str:
    """Why ``model`` gave no reply, in a few words, for the label of the one that answered instead."""
    if isinstance(exc, BackendUnavailable):
        return f"{model} is not reachable"
    if isinstance(exc, BackendTimeout):
        return f"{model} did not answer in time"
    if isinstance(exc, ContextOverflow):
        return too_long_for(model)
    if exc.status_code:
        return f"{model} refused (HTTP {exc.status_code})"
    return f"{model} failed"


def too_long_for(model: str) -> str:
    return f"the chat no longer fits {model}'s context"


def shorten(text: str, limit: int = 300) -> str:
    """One line of at most ``limit`` characters, for showing a server's message (URLs redacted)."""
    line = " ".join(redact(str(text)).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
