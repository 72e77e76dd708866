"""Self-hosted Gemma served by vLLM, over either of its two wire protocols.

* ``openai`` (default): vLLM's OpenAI-compatible server — ``/v1/chat/completions`` (streamed
  SSE) for chat, ``/v1/completions`` for a raw prompt, ``/v1/models``, ``/health``.
* ``legacy``: the Vertex AI Model Garden container the codelab used — ``POST /generate``
  answering ``{"predictions": [text]}``, the text possibly echoing the prompt.

Connection errors and 503 (model still loading) are retried with backoff; any other error
status is reported at once. Every failure is a ``BackendError`` worded for the user.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import httpx
import tenacity
from pydantic import ValidationError

from hybridchat.backends.base import (
    BackendHealth,
    ChatBackend,
    GenerationParams,
    ReplyStream,
    Usage,
)
from hybridchat.config import Settings
from hybridchat.errors import (
    BackendError,
    BackendLoading,
    BackendTimeout,
    BackendUnavailable,
    BadResponse,
    EmptyResponse,
    status_error,
)
from hybridchat.history import (
    Template,
    looks_like_gemma_prompt,
    process_message_gemma,
    process_message_openai,
)
from hybridchat.protocols import legacy, openai

log = logging.getLogger(__name__)

HEALTH_PATH = "/health"  # vLLM's readiness route; the Kubernetes probes use it too
# Where a raw completion runs on into a turn that is not its own.
_NEXT_TURN = re.compile(r"<end_of_turn>|<start_of_turn>|user's turn:", re.IGNORECASE)
_TEMPLATE_STOPS: dict[Template, tuple[str, ...]] = {
    "gemma": ("<end_of_turn>",),
    "codelab": ("User's Turn:",),
}


class VllmClient:
    """HTTP client for a vLLM server; shared by ``VllmBackend`` and ``call_gemma_model``."""

    def __init__(
        self,
        base_url: str,
        *,
        api: Literal["openai", "legacy"] = "openai",
        model: str | None = None,
        display: str = "Gemma",
        connect_timeout: float = 5.0,
        timeout: float = 120.0,
        retry_attempts: int = 3,
        retry_backoff: float = 1.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.api = api
        self.display = display
        self._model = model
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=connect_timeout))
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type((BackendUnavailable, BackendLoading)),
            stop=tenacity.stop_after_attempt(retry_attempts),
            wait=tenacity.wait_exponential(multiplier=retry_backoff, max=30),
            reraise=True,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> VllmClient:
        return cls(
            settings.resolved_vllm_url,
            api=settings.vllm_api,
            model=settings.gemma_model,
            connect_timeout=settings.connect_timeout,
            timeout=settings.timeout,
            retry_attempts=settings.retry_attempts,
            retry_backoff=settings.retry_backoff,
        )

    def close(self) -> None:
        self._http.close()

    def served_model(self) -> str:
        """The model name the server serves (asked once from ``/v1/models`` unless configured)."""
        if self._model is None:
            with self._request("GET", "/v1/models") as response:
                models = self._parse(openai.ModelList, self._json(response))
            if not models.data:
                raise BadResponse(f"{self.display}'s server lists no model.", backend=self.display)
            self._model = models.data[0].id
        return self._model

    def stream_chat(self, messages: list[dict[str, str]], params: GenerationParams) -> Iterator[str | Usage]:
        """Stream a chat reply through ``/v1/chat/completions`` (OpenAI protocol only); the
        server's token counts come last, as a ``Usage``."""
        body = {
            "model": self.served_model(),
            "messages": messages,
            **_sampling(params, params.stop),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        produced, usage = False, None
        with self._request("POST", "/v1/chat/completions", body) as response:
            for event in self._sse_events(response):
                chunk = self._parse(openai.ChatCompletionChunk, event)
                for choice in chunk.choices:
                    if choice.delta.content:
                        produced = True
                        yield choice.delta.content
                if chunk.usage is not None:
                    usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        if not produced:
            raise self._empty()
        if usage is not None:
            yield usage

    def generate(self, prompt: str, params: GenerationParams) -> str:
        """Complete a raw prompt (``/v1/completions`` or legacy ``/generate``); only the new reply."""
        template = looks_like_gemma_prompt(prompt)
        stop = params.stop or (_TEMPLATE_STOPS[template] if template else ())
        if self.api == "legacy":
            body = {"prompt": prompt, **_sampling(params, stop)}
            with self._request("POST", "/generate", body) as response:
                predictions = self._parse(legacy.GenerateResponse, self._json(response)).predictions
            if not predictions:
                raise self._empty()
            raw = predictions[0]
        else:
            body = {"model": self.served_model(), "prompt": prompt, **_sampling(params, stop)}
            with self._request("POST", "/v1/completions", body) as response:
                choices = self._parse(openai.Completion, self._json(response)).choices
            if not choices:
                raise self._empty()
            raw = choices[0].text
        reply = clean_gemma_output(raw, prompt)
        if not reply:
            raise self._empty()
        return reply

    def health(self) -> BackendHealth:
        """Ask ``/health`` (and the served model) without retrying; never raises."""
        try:
            response = self._http.get(f"{self.base_url}{HEALTH_PATH}", timeout=self._connect_timeout)
        except httpx.HTTPError as exc:
            return BackendHealth(False, str(self._transport_error(exc)))
        if response.status_code == 503:
            return BackendHealth(False, str(self._loading()))
        if response.status_code >= 400:
            return BackendHealth(False, str(status_error(self.display, response.status_code)))
        if self.api == "legacy":
            return BackendHealth(True, f"{self.display} is up at {self.base_url}", self._model)
        try:
            model = self.served_model()
        except BackendError as exc:
            return BackendHealth(False, str(exc))
        return BackendHealth(True, f"{self.display} is up, serving {model}", model)

    @contextmanager
    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Iterator[httpx.Response]:
        """Send with retries; yield the open (streaming) response of a success."""
        log.debug("%s %s%s", method, self.base_url, path)
        for attempt in self._retrying.copy():  # a copy per call: Retrying keeps state
            with attempt:
                response = self._send(method, path, body)
        try:
            yield response
        finally:
            response.close()

    def _send(self, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
        request = self._http.build_request(method, f"{self.base_url}{path}", json=body)
        try:
            response = self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if response.status_code < 400:
            return response
        try:
            detail = openai.error_message(json.loads(response.read()))
        except (ValueError, httpx.HTTPError):
            detail = None
        finally:
            response.close()
        if response.status_code == 503:
            raise self._loading()
        raise status_error(self.display, response.status_code, detail)

    def _sse_events(self, response: httpx.Response) -> Iterator[Any]:
        """The JSON payloads of an SSE stream, which must end with ``data: [DONE]``."""
        try:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    return
                event = self._loads(data)
                if message := openai.error_message(event):
                    raise BadResponse(f"{self.display} failed mid-reply: {message}", backend=self.display)
                yield event
        except httpx.HTTPError as exc:
            if isinstance(exc, httpx.TimeoutException):
                raise self._timed_out() from None
            raise BackendUnavailable(
                f"{self.display} stopped answering mid-reply (connection lost).", backend=self.display
            ) from None
        raise BadResponse(f"{self.display}'s reply was cut off: the stream ended early.", backend=self.display)

    def _json(self, response: httpx.Response) -> Any:
        try:
            return self._loads(response.read())
        except httpx.TimeoutException:
            raise self._timed_out() from None
        except httpx.HTTPError:
            raise BackendUnavailable(
                f"{self.display} stopped answering mid-reply (connection lost).", backend=self.display
            ) from None

    def _loads(self, data: str | bytes) -> Any:
        try:
            return json.loads(data)
        except ValueError:
            raise BadResponse(
                f"{self.display} sent an answer that is not valid JSON.", backend=self.display
            ) from None

    def _parse(self, schema: type[Any], payload: Any) -> Any:
        try:
            return schema.model_validate(payload)
        except ValidationError as exc:
            field = ".".join(map(str, exc.errors()[0]["loc"])) or "body"
            raise BadResponse(
                f"{self.display} sent an answer hybridchat cannot read (bad '{field}').",
                backend=self.display,
            ) from None

    def _transport_error(self, exc: httpx.HTTPError) -> BackendError:
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return self._timed_out()
        return BackendUnavailable(
            f"{self.display} is not reachable at {self.base_url} ({type(exc).__name__}). "
            "Is the server running?",
            backend=self.display,
        )

    def _loading(self) -> BackendLoading:
        return BackendLoading(
            f"{self.display} is starting (its model is still loading), try Gemini or wait a minute.",
            backend=self.display,
            status_code=503,
        )

    def _timed_out(self) -> BackendTimeout:
        return BackendTimeout(
            f"{self.display} did not answer within {self._timeout:g} s. "
            "It may be busy: try again, or switch model.",
            backend=self.display,
        )

    def _empty(self) -> EmptyResponse:
        return EmptyResponse(
            f"{self.display} returned an empty reply. Try rephrasing, or raise max tokens.",
            backend=self.display,
        )


class VllmBackend(ChatBackend):
    """Gemma on vLLM as a chat backend."""

    def __init__(self, client: VllmClient, *, name: str = "gemma", label: str, template: Template = "gemma"):
        self.client = client
        self.name = name
        self.label = label
        self.template = template

    def stream(
        self, message: str, history: Iterable[Any], params: GenerationParams | None = None
    ) -> Iterator[str]:
        params = params or GenerationParams()
        if self.client.api == "openai":
            messages = process_message_openai(message, history, params.system_prompt)
            return ReplyStream(self.client.stream_chat(messages, params))
        # /generate has no streaming: the whole reply comes as one piece.
        prompt = process_message_gemma(message, history, params.system_prompt, self.template)

        def whole_reply() -> Iterator[str]:
            yield self.client.generate(prompt, params)

        return ReplyStream(whole_reply())

    def health(self) -> BackendHealth:
        return self.client.health()


def clean_gemma_output(raw: str, prompt: str = "") -> str:
    """Only the model's new reply from a raw completion.

    Strips an echoed prompt (plain, or the container's ``Prompt:\\n…\\nOutput:\\n…``), an
    ``Output:`` prefix and any turn the model went on to invent (the codelab's rules).

    >>> clean_gemma_output("Prompt:\\nUser's Turn:\\n>>> Hi\\nAssistant's Turn:\\n>>> \\n"
    ...                    "Output:\\n Hello! User's Turn: more", "User's Turn:\\n>>> Hi\\nAssistant's Turn:\\n>>> \\n")
    'Hello!'
    """
    wrapped = legacy.echoed(prompt, "")
    if prompt and raw.startswith(wrapped):
        text = raw[len(wrapped) :]
    elif prompt and raw.startswith(prompt):
        text = raw[len(prompt) :]
    else:
        text = raw
        for opener in ("<start_of_turn>model\n", "Assistant's Turn:\n>>>"):
            _, found, after = text.rpartition(opener)
            if found:
                text = after
                break
    text = _NEXT_TURN.split(text, maxsplit=1)[0].lstrip()
    if text.lower().startswith("output:"):
        text = text[len("output:") :]
    return text.strip()


def call_gemma_model(
    prompt: str,
    temperature: float = 0.9,
    top_p: float = 0.95,
    max_tokens: int = 1024,
    *,
    client: VllmClient | None = None,
) -> str:
    """Send a raw prompt (from ``process_message_gemma``) to Gemma and return its reply.

    The codelab's function, on the configured protocol; reads ``Settings()`` when no
    ``client`` is given. Raises a ``BackendError`` whose text explains what went wrong.
    """
    params = GenerationParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    if client is not None:
        return client.generate(prompt, params)
    owned = VllmClient.from_settings(Settings())
    try:
        return owned.generate(prompt, params)
    finally:
        owned.close()


def _sampling(params: GenerationParams, stop: Iterable[str]) -> dict[str, Any]:
    return {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
        "stop": list(stop) or None,
    }
