"""vLLM's answers as hybridchat's errors, worded for a visitor: the one place they are mapped.

``VllmClient`` takes these methods from ``VllmErrors``: the SDK's exceptions, vLLM's refusals
(a prompt over the context, a model it does not serve, still loading) and answers of the wrong
shape each become a ``BackendError`` whose text can be shown as it is; the server's own text goes
only to the log, as it may echo the request.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import openai
from pydantic import BaseModel, ValidationError

from hybridchat.errors import (
    BackendError,
    BackendLoading,
    BackendTimeout,
    BackendUnavailable,
    BadResponse,
    ContextOverflow,
    EmptyResponse,
    ModelNotFound,
    NeedsCredentials,
    shorten,
    status_error,
)

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

# vLLM's refusals of a prompt or max_tokens that does not fit: "This model's maximum context
# length is 2048 tokens. However, …" and "max_tokens=4096 cannot be greater than max_model_len=2048".
_CONTEXT_LIMIT = re.compile(r"maximum context length is (\d+) tokens|max_model_len=(\d+)")
_PROMPT_SIZE = re.compile(r"your prompt contains (?:at least )?(\d+) input tokens")


class VllmErrors:
    """The wording of a vLLM client's errors; the client sets these attributes."""

    shown_url: str
    keyed: bool
    _model: str | None
    _max_model_len: int | None
    _timeout: float

    @contextmanager
    def _errors(self, *, mid_reply: bool = False) -> Iterator[None]:
        """The SDK's exceptions as our errors, worded for the user: the one place they are mapped."""
        try:
            yield
        except BackendError:
            raise
        except openai.APIStatusError as exc:
            raise self._refusal(exc.status_code, _error_detail(exc.body)) from None
        except openai.APITimeoutError as exc:
            # Not connected in time: nothing listens (yet). Connected, no answer: the model is busy.
            if not mid_reply and type(exc.__cause__).__name__ == "ConnectTimeout":
                raise self._unreachable(exc.__cause__) from None
            raise self._timed_out() from None
        except openai.APIConnectionError as exc:
            if mid_reply:
                raise BackendUnavailable(
                    "Gemma stopped answering mid-reply (connection lost)."
                ) from None
            raise self._unreachable(exc.__cause__) from None
        except openai.APIError as exc:  # an error event inside the stream
            # vLLM's own text ("EngineCore encountered an issue. See stack trace…") is for its
            # operator, not a visitor.
            log.warning("Gemma failed mid-reply: %s", shorten(exc.message.splitlines()[0], 160))
            raise BadResponse(
                "Gemma's server failed mid-reply; it may be restarting. "
                "Try again in a minute, or switch model.",
            ) from None
        except json.JSONDecodeError:
            raise BadResponse("Gemma sent an answer that is not valid JSON.") from None
        except (AttributeError, TypeError):  # the SDK does not validate: a field of the wrong shape
            raise self._unreadable("body") from None

    def _parse(self, schema: type[M], payload: Any) -> M:
        try:
            return schema.model_validate(payload)
        except ValidationError as exc:
            raise self._unreadable(".".join(map(str, exc.errors()[0]["loc"])) or "body") from None

    def _unreadable(self, field: str) -> BadResponse:
        return BadResponse(
            f"Gemma sent an answer hybridchat cannot read (bad '{field}')."
        )

    def _refusal(self, status: int, detail: str | None) -> BackendError:
        """Our own sentence for an error status; the server's reason (its first line: later ones
        may echo the request) only goes to the log."""
        reason = shorten((detail or "(no message)").splitlines()[0], 160)
        log.warning("Gemma answered HTTP %s: %s", status, reason)
        if status == 503:
            return self._loading()
        if status == 401:  # vLLM started with --api-key: {"error": "Unauthorized"}, for /v1 only
            said = "refused the API key hybridchat sent" if self.keyed else "wants an API key"
            return NeedsCredentials(
                f"Gemma's server at {self.shown_url} {said} (HTTP 401). Set HYBRIDCHAT_VLLM_API_KEY to the key "
                "it was started with (`--api-key`; your instructor's, for a room's Gemma).",
                status_code=status,
            )
        if status == 404 and detail and "does not exist" in detail:
            return ModelNotFound(
                f"Gemma's server does not serve the model {self._model!r}.",
                status_code=status,
            )
        found = _CONTEXT_LIMIT.search(detail or "") if status == 400 else None
        if found:
            self._max_model_len = int(found.group(1) or found.group(2))
            size = _PROMPT_SIZE.search(detail or "")
            return ContextOverflow(
                f"This conversation is too long for Gemma's context "
                f"({self._max_model_len:,} tokens). Start a new chat, or switch model.",
                status_code=status,
                limit=self._max_model_len,
                prompt_tokens=int(size.group(1)) if size else None,
            )
        return status_error("Gemma", status)

    def _unreachable(self, cause: BaseException | None) -> BackendUnavailable:
        # vLLM listens only once its weights are loaded: "not listening" may mean "starting".
        return BackendUnavailable(
            f"Gemma is not reachable at {self.shown_url} ({type(cause or self).__name__}). "
            "Is the server running? A server just started listens only once its model has loaded "
            "(minutes for Gemma): try Gemini meanwhile.",
        )

    def _loading(self) -> BackendLoading:
        return BackendLoading(
            "Gemma is starting (its model is still loading), try Gemini or wait a minute.",
            status_code=503,
        )

    def _timed_out(self) -> BackendTimeout:
        return BackendTimeout(
            f"Gemma did not answer within {self._timeout:g} s. "
            "It may be busy: try again, or switch model.",
        )

    def _empty(self) -> EmptyResponse:
        return EmptyResponse(
            "Gemma returned an empty reply. Try rephrasing, or raise max tokens.",
        )


def _error_detail(body: object) -> str | None:
    """The message of an error body as the SDK keeps it: vLLM's ``error`` object, or its
    older flat shape (``{"object": "error", "message": …}``)."""
    message = body.get("message") if isinstance(body, dict) else None
    return message if isinstance(message, str) else None
