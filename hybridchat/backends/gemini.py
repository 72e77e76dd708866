"""Gemini through ``google-genai``: Vertex AI (project + location + ADC) or an API key.

``HYBRIDCHAT_GEMINI_URL`` (``http_options.base_url``) points the real SDK at another
endpoint, such as ``hybridchat serve-local``'s stand-in. Transient failures are asked again
by the one ``RetryPolicy`` every backend follows (the SDK's own retries stay off); what still
fails, and safety blocks and empty answers, become clear messages.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import google.auth
import google.auth.exceptions
import httpx
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from pydantic import ValidationError

from hybridchat.backends.base import (
    BackendHealth,
    ChatBackend,
    ContextWindow,
    Finish,
    GenerationParams,
    ReplyStream,
    RetryPolicy,
    Usage,
    estimate_tokens,
)
from hybridchat.config import Settings
from hybridchat.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    BadResponse,
    ContentBlocked,
    ContextOverflow,
    EmptyResponse,
    NeedsCredentials,
    status_error,
)
from hybridchat.history import Message, gemini_contents, system_instruction

log = logging.getLogger(__name__)
T = TypeVar("T")

try:  # google-genai sends through httpx2 when it is installed, else httpx
    import httpx2

    _TIMEOUTS: tuple[type[Exception], ...] = (httpx.TimeoutException, httpx2.TimeoutException)
    _TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx.TransportError, httpx2.TransportError)
except ImportError:
    _TIMEOUTS, _TRANSPORT_ERRORS = (httpx.TimeoutException,), (httpx.TransportError,)

# Gemini's refusal of a prompt over the model's input limit.
_INPUT_LIMIT = re.compile(r"input token count \((\d+)\) exceeds the maximum number of tokens allowed \((\d+)\)")
_BLOCKING_FINISH = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
# The stand-in server accepts any key; it is not a secret.
LOCAL_STAND_IN_KEY = "local-stand-in"


def gemini_label(model: str, where: str, whose: str = "") -> str:
    """``gemini_label("gemini-2.5-flash", "Vertex AI")`` → ``"Gemini 2.5 Flash (Vertex AI)"``;
    ``whose`` (`` · hybridchat``) follows the model's name."""
    words = model.removeprefix("models/").split("-")
    return " ".join(word[:1].upper() + word[1:] for word in words) + f"{whose} ({where})"


def make_gemini_client(settings: Settings) -> genai.Client:
    """A ``genai.Client`` for the configured mode; ``NeedsCredentials`` when none is usable."""
    # No retry_options: the SDK does not retry, GeminiBackend's RetryPolicy does.
    http_options = types.HttpOptions(base_url=settings.resolved_gemini_url, timeout=int(settings.timeout * 1000))
    if settings.google_api_key is not None:
        return genai.Client(api_key=settings.google_api_key.get_secret_value(), http_options=http_options)
    if settings.mode == "local":
        return genai.Client(api_key=LOCAL_STAND_IN_KEY, http_options=http_options)
    project = settings.google_cloud_project
    try:
        credentials, adc_project = google.auth.default(
            scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
    except google.auth.exceptions.DefaultCredentialsError:
        raise _needs_credentials() from None
    project = project or adc_project
    if not project:
        raise NeedsCredentials(
            "Gemini on Vertex AI needs a project: set GOOGLE_CLOUD_PROJECT."
        )
    return genai.Client(
        vertexai=True,
        project=project,
        location=settings.google_cloud_location,
        credentials=credentials,
        http_options=http_options,
    )


class GeminiBackend(ChatBackend):
    """Gemini as a chat backend; the client is made on first use, so a missing
    credential is a message in the chat rather than a crash at start-up."""

    def __init__(
        self,
        client: genai.Client | None = None,
        *,
        settings: Settings | None = None,
        model: str = "gemini-2.5-flash",
        name: str = "gemini",
        label: str | None = None,
        retry: RetryPolicy | None = None,
    ):
        if client is None and settings is None:
            raise ValueError("GeminiBackend needs a client or settings")
        self._client = client
        self._settings = settings
        self._retry = retry or (RetryPolicy.from_settings(settings) if settings else RetryPolicy())
        self._client_lock = threading.Lock()
        self._configured_limit = settings.gemini_context_tokens if settings else None
        self._input_limit: int | None = None  # from models.get (0: it gave none) or a refusal
        self.model = model
        self.name = name
        self.label = label or gemini_label(model, "Gemini API")

    @property
    def client(self) -> genai.Client:
        with self._client_lock:
            if self._client is None:
                assert self._settings is not None
                self._client = make_gemini_client(self._settings)
            return self._client

    def stream(self, messages: Sequence[Message], params: GenerationParams) -> ReplyStream:
        config = _config(params, system_instruction(messages, params.system_prompt))
        return ReplyStream(self._pieces(gemini_contents(messages), config))

    def _pieces(
        self, contents: list[types.Content], config: types.GenerateContentConfig
    ) -> Iterator[str | Usage | Finish]:
        produced, usage, finish = False, None, None
        with self._errors():
            chunks, first = self._retry.call(lambda: self._open_stream(contents, config))
            for chunk in itertools.chain(first, chunks):
                text = self._text_of(chunk, produced)
                if text:
                    produced = True
                    yield text
                usage, finish = _usage(chunk) or usage, _finish(chunk) or finish
        if not produced:
            raise self._empty(None)
        if usage is not None:
            yield usage
        if finish is not None:
            yield Finish(finish)

    def _open_stream(
        self, contents: list[types.Content], config: types.GenerateContentConfig
    ) -> tuple[Iterator[types.GenerateContentResponse], list[types.GenerateContentResponse]]:
        """The stream and its first chunk: the request is sent, and may fail, only then."""
        with self._errors():
            chunks = self.client.models.generate_content_stream(model=self.model, contents=contents, config=config)
            return chunks, list(itertools.islice(chunks, 1))

    def context_window(self) -> ContextWindow | None:
        """Most prompt tokens (the reply has a limit of its own): the smaller of the configured
        limit and the model's ``input_token_limit`` (asked once; Vertex AI does not give it) or
        the limit Gemini named when it refused a prompt."""
        if self._input_limit is None:
            try:
                with self._errors():
                    self._input_limit = self.client.models.get(model=self.model).input_token_limit or 0
            except BackendError:
                pass  # the turn itself will say what is wrong; asked again next turn
        known = [limit for limit in (self._configured_limit, self._input_limit) if limit]
        return ContextWindow(min(known), includes_reply=False) if known else None

    def count_tokens(self, messages: Sequence[Message], params: GenerationParams) -> int:
        """Gemini's own count (``countTokens``); the system instruction is counted as one
        more content, as the API-key endpoint takes no system instruction there."""
        contents = gemini_contents(messages)
        system = system_instruction(messages, params.system_prompt)
        if system:
            contents.insert(0, types.Content(role="user", parts=[types.Part(text=system)]))
        counted = self._retry.call(
            lambda: self._call(self.client.models.count_tokens, model=self.model, contents=contents)
        ).total_tokens
        return counted if counted is not None else estimate_tokens(messages, params.system_prompt)

    def answer(self, messages: Sequence[Message], params: GenerationParams) -> ReplyStream:
        config = _config(params, system_instruction(messages, params.system_prompt))
        response, text = self._generate(gemini_contents(messages), config)
        return ReplyStream.whole(text, _usage(response), _finish(response))

    def generate(self, contents: list[types.Content], params: GenerationParams) -> str:
        """One whole reply to ready-made ``contents`` (the notebook-facing path)."""
        return self._generate(contents, _config(params, params.system_prompt))[1]

    def _generate(
        self, contents: list[types.Content], config: types.GenerateContentConfig
    ) -> tuple[types.GenerateContentResponse, str]:
        response = self._retry.call(
            lambda: self._call(self.client.models.generate_content, model=self.model, contents=contents, config=config)
        )
        with self._errors():
            text = self._text_of(response, False)
        if not text:
            raise self._empty(response)
        return response, text

    def health(self) -> BackendHealth:
        try:
            with self._errors():
                found = self.client.models.get(model=self.model)
        except BackendError as exc:
            return BackendHealth(False, str(exc))
        serving = found.display_name or found.name or self.model
        return BackendHealth(True, f"Gemini is up, serving {serving}", self.model)

    def _text_of(self, response: types.GenerateContentResponse, produced: bool) -> str:
        """The text of a response or chunk; raises when a safety filter stopped it."""
        feedback = response.prompt_feedback
        if feedback is not None and feedback.block_reason:
            raise ContentBlocked(
                f"Gemini blocked this message for safety "
                f"({_name(feedback.block_reason)}). Try rephrasing it.",
            )
        if not response.candidates:
            return ""
        candidate = response.candidates[0]
        parts = candidate.content.parts if candidate.content and candidate.content.parts else []
        text = "".join(part.text for part in parts if part.text and not part.thought)
        reason = _name(candidate.finish_reason)
        if reason in _BLOCKING_FINISH:
            what = "the rest of its reply" if produced or text else "its reply"
            raise ContentBlocked(
                f"Gemini withheld {what} ({reason}). Try rephrasing your message.",
            )
        if not text and not produced and reason == "MAX_TOKENS":
            raise self._empty(response)
        return text

    def _empty(self, response: types.GenerateContentResponse | None) -> EmptyResponse:
        reason = ""
        if response is not None and response.candidates:
            reason = _name(response.candidates[0].finish_reason)
        if reason == "MAX_TOKENS":
            return EmptyResponse(
                "Gemini used its whole max-tokens budget before answering. Raise max tokens.",
            )
        return EmptyResponse(
            "Gemini returned an empty reply. Try rephrasing your message."
        )

    def _call(self, method: Callable[..., T], **arguments: Any) -> T:
        with self._errors():
            return method(**arguments)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn the SDK's and the transport's exceptions into messages for the user."""
        try:
            yield
        except BackendError:
            raise
        except genai_errors.APIError as exc:
            found = _INPUT_LIMIT.search(exc.message or "") if exc.code == 400 else None
            if found:
                self._input_limit = int(found.group(2))
                raise ContextOverflow(
                    f"This conversation is too long for Gemini ({self._input_limit:,} tokens at most). "
                    "Start a new chat.",
                    status_code=400,
                    limit=self._input_limit,
                    prompt_tokens=int(found.group(1)),
                ) from None
            if exc.code == 503:
                raise BackendUnavailable(
                    "Gemini is overloaded right now (HTTP 503). Try again shortly, or switch model.",
                    status_code=503,
                ) from None
            raise status_error("Gemini", exc.code, exc.message) from None
        except _TIMEOUTS:
            raise BackendTimeout(
                "Gemini did not answer in time. Try again, or switch model."
            ) from None
        except _TRANSPORT_ERRORS as exc:
            raise BackendUnavailable(
                f"Gemini is not reachable ({type(exc).__name__}). Check the network or "
                "HYBRIDCHAT_GEMINI_URL.",
            ) from None
        except (google.auth.exceptions.DefaultCredentialsError, google.auth.exceptions.RefreshError):
            raise _needs_credentials() from None
        except (ValidationError, ValueError) as exc:
            log.debug("unreadable Gemini answer: %s", type(exc).__name__)
            raise BadResponse(
                "Gemini sent an answer hybridchat cannot read."
            ) from None


def call_gemini_model(
    contents: list[types.Content],
    temperature: float = 0.9,
    top_p: float = 0.95,
    max_tokens: int = 1024,
    *,
    client: GeminiBackend | genai.Client | None = None,
) -> str:
    """Send ``contents`` (from ``process_message_gemini``) to Gemini and return its reply.

    The codelab's function; reads ``Settings()`` when no ``client`` is given. Raises a
    ``BackendError`` whose text explains what went wrong.
    """
    if isinstance(client, GeminiBackend):
        backend = client
    else:
        settings = Settings()
        backend = GeminiBackend(client, settings=settings, model=settings.gemini_model)
    params = GenerationParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    return backend.generate(contents, params)


def _config(params: GenerationParams, system: str | None) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        temperature=params.temperature,
        top_p=params.top_p,
        max_output_tokens=params.max_tokens,
        stop_sequences=list(params.stop) or None,
        system_instruction=system,
        # The SDK's automatic function calling needs tools, and the app gives none.
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )


def _usage(response: types.GenerateContentResponse) -> Usage | None:
    counted = response.usage_metadata
    if counted is None or counted.prompt_token_count is None:
        return None
    return Usage(counted.prompt_token_count, counted.candidates_token_count or 0)


def _finish(response: types.GenerateContentResponse) -> str | None:
    """``"length"`` where the reply stopped at max tokens, ``"stop"`` where it ended."""
    reason = _name(response.candidates[0].finish_reason) if response.candidates else ""
    return ("length" if reason == "MAX_TOKENS" else "stop") if reason else None


def _name(value: Any) -> str:
    return str(getattr(value, "value", value) or "")


def _needs_credentials() -> NeedsCredentials:
    return NeedsCredentials(
        "Gemini on Vertex AI has no credentials here: run `gcloud auth application-default login`, "
        "or set GOOGLE_API_KEY.",
    )
