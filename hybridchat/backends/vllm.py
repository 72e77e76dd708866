"""Self-hosted Gemma served by vLLM, over either of its two wire protocols.

* ``openai`` (default): vLLM's OpenAI-compatible server — ``/v1/chat/completions`` (streamed
  SSE) for chat, ``/v1/completions`` for a raw prompt, ``/v1/models``, ``/health``.
* ``legacy``: the Vertex AI Model Garden container the codelab used — ``POST /generate``
  answering ``{"predictions": [text]}``, the text possibly echoing the prompt.

Connection errors and 503 (model still loading) are retried with backoff; any other error
status is reported at once. Every failure is a ``BackendError`` worded for the user; the
server's own text goes to the log. The served model's name and context length come from
``/v1/models`` (re-asked when the server answers that the model does not exist: it restarted
under another name), exact token counts from vLLM's ``/tokenize``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from typing import Any, Literal

import httpx
import tenacity
from pydantic import ValidationError

from hybridchat.backends.base import (
    BackendHealth,
    ChatBackend,
    ContextWindow,
    Finish,
    GenerationParams,
    ReplyStream,
    Usage,
    estimate_tokens,
)
from hybridchat.config import Settings
from hybridchat.errors import (
    BackendError,
    BackendLoading,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    BadResponse,
    ContextOverflow,
    EmptyResponse,
    ModelNotFound,
    shorten,
    status_error,
)
from hybridchat.history import (
    Template,
    looks_like_gemma_prompt,
    process_message_gemma,
    process_message_openai,
)
from hybridchat.protocols import legacy, openai
from hybridchat.redact import redact_url

log = logging.getLogger(__name__)

HEALTH_PATH = "/health"  # vLLM's readiness route; the Kubernetes probes use it too
# Where a raw completion runs on into a turn that is not its own.
_NEXT_TURN = re.compile(r"<end_of_turn>|<start_of_turn>|user's turn:", re.IGNORECASE)
# vLLM's refusals of a prompt or max_tokens that does not fit: "This model's maximum context
# length is 2048 tokens. However, …" and "max_tokens=4096 cannot be greater than max_model_len=2048".
_CONTEXT_LIMIT = re.compile(r"maximum context length is (\d+) tokens|max_model_len=(\d+)")
_PROMPT_SIZE = re.compile(r"your prompt contains (?:at least )?(\d+) input tokens")
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
        context_tokens: int | None = None,
        display: str = "Gemma",
        connect_timeout: float = 5.0,
        timeout: float = 120.0,
        retry_attempts: int = 3,
        retry_backoff: float = 1.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.shown_url = redact_url(self.base_url)  # for messages and logs: no password in it
        self.api = api
        self.display = display
        self._configured = model
        self._model = model  # the name requests use: the configured one, else the discovered one
        self._context_tokens = context_tokens
        self._max_model_len: int | None = None  # from /v1/models, /tokenize or a refusal
        self._context_asked = False
        self._can_tokenize = api == "openai"
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
            context_tokens=settings.gemma_context_tokens,
            connect_timeout=settings.connect_timeout,
            timeout=settings.timeout,
            retry_attempts=settings.retry_attempts,
            retry_backoff=settings.retry_backoff,
        )

    def close(self) -> None:
        self._http.close()

    @property
    def known_model(self) -> str | None:
        """The served model's name, if configured or discovered already (asks nothing)."""
        return self._model

    def served_model(self) -> str:
        """The model name requests use: the configured one, else the first ``/v1/models`` lists."""
        if self._model is None:
            self.discover()
        assert self._model is not None
        return self._model

    def discover(self) -> None:
        """Ask ``/v1/models`` what the server serves now, and its context length.

        ``ModelNotFound`` when the configured model is not among them: every turn would fail."""
        with self._request("GET", "/v1/models") as response:
            cards = self._parse(openai.ModelList, self._json(response)).data
        if not cards:
            raise BadResponse(f"{self.display}'s server lists no model.", backend=self.display)
        card = next((c for c in cards if c.id == self._configured), None) if self._configured else cards[0]
        if card is None:
            served = ", ".join(repr(c.id) for c in cards)
            raise ModelNotFound(
                f"{self.display}'s server does not serve {self._configured!r} (HYBRIDCHAT_GEMMA_MODEL); "
                f"it serves {served}. Fix the setting, or unset it to use what the server serves.",
                backend=self.display,
                status_code=404,
            )
        self._model = card.id
        self._max_model_len = card.max_model_len or self._max_model_len
        self._can_tokenize = self.api == "openai"  # a proxy's 404 while the server restarted is forgotten

    def context_window(self) -> ContextWindow | None:
        """The context length (prompt and reply): the smaller of the configured one and what
        the server said (``/v1/models``, ``/tokenize``, or a refusal naming its limit)."""
        if not (self._context_tokens or self._max_model_len or self._context_asked) and self.api == "openai":
            try:
                self.discover()
                self._context_asked = True  # asked once; a server may not tell (not vLLM)
            except BackendError:
                pass  # the turn itself will say what is wrong; asked again next turn
        known = [tokens for tokens in (self._context_tokens, self._max_model_len) if tokens]
        return ContextWindow(min(known)) if known else None

    def count_tokens(self, *, messages: list[dict[str, str]] | None = None, prompt: str | None = None) -> int | None:
        """The prompt's exact size from vLLM's ``POST /tokenize`` (``messages`` through the chat
        template); ``None`` where the server has no such route (the Model Garden container)."""
        if not self._can_tokenize:
            return None
        payload = {"messages": messages, "add_generation_prompt": True} if messages is not None else {"prompt": prompt}
        try:
            with closing(self._post_for_model("/tokenize", lambda model: {"model": model, **payload})) as response:
                counted = self._parse(openai.TokenizeResponse, self._json(response))
        except BackendRejected as exc:
            if exc.status_code in (404, 405) and not isinstance(exc, ModelNotFound):
                self._can_tokenize = False
                return None
            raise
        self._max_model_len = counted.max_model_len or self._max_model_len
        return counted.count

    def stream_chat(self, messages: list[dict[str, str]], params: GenerationParams) -> Iterator[str | Usage | Finish]:
        """Stream a chat reply through ``/v1/chat/completions`` (OpenAI protocol only); the
        server's token counts and finish reason come last."""

        def body(model: str) -> dict[str, Any]:
            return {
                "model": model,
                "messages": messages,
                **_sampling(params, params.stop),
                "stream": True,
                "stream_options": {"include_usage": True},
            }

        produced, usage, finish = False, None, None
        with closing(self._post_for_model("/v1/chat/completions", body)) as response:
            for event in self._sse_events(response):
                chunk = self._parse(openai.ChatCompletionChunk, event)
                for choice in chunk.choices:
                    if choice.delta.content:
                        produced = True
                        yield choice.delta.content
                    finish = choice.finish_reason or finish
                if chunk.usage is not None:
                    usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        if finish == "abort":
            raise BackendUnavailable(
                f"{self.display}'s server stopped this reply (it is shutting down or restarting). "
                "Try again in a minute, or switch model.",
                backend=self.display,
            )
        if not produced:
            raise self._empty()
        if usage is not None:
            yield usage
        if finish is not None:
            yield Finish(finish)

    def generate(self, prompt: str, params: GenerationParams) -> str:
        """Complete a raw prompt (``/v1/completions`` or legacy ``/generate``); only the new reply."""
        return self.complete_prompt(prompt, params)[0]

    def complete_prompt(self, prompt: str, params: GenerationParams) -> tuple[str, str | None]:
        """``generate``'s reply and the server's finish reason (``None``: not reported)."""
        template = looks_like_gemma_prompt(prompt)
        stop = params.stop or (_TEMPLATE_STOPS[template] if template else ())
        if self.api == "legacy":
            body = {"prompt": prompt, **_sampling(params, stop)}
            with self._request("POST", "/generate", body) as response:
                predictions = self._parse(legacy.GenerateResponse, self._json(response)).predictions
            if not predictions:
                raise self._empty()
            raw, finish = predictions[0], None
        else:
            request = {"prompt": prompt, **_sampling(params, stop)}
            with closing(self._post_for_model("/v1/completions", lambda model: {"model": model, **request})) as response:
                choices = self._parse(openai.Completion, self._json(response)).choices
            if not choices:
                raise self._empty()
            raw, finish = choices[0].text, choices[0].finish_reason
        reply = clean_gemma_output(raw, prompt)
        if not reply:
            raise self._empty()
        return reply, finish

    def health(self) -> BackendHealth:
        """Whether a turn would work now, without retrying; never raises. OpenAI protocol:
        ``/health``, then the model named in settings among those ``/v1/models`` lists.
        Legacy: a one-token ``/generate`` (a server without it answers ``/health`` too)."""
        if self.api == "legacy":
            return self._legacy_health()
        try:
            response = self._http.get(f"{self.base_url}{HEALTH_PATH}", timeout=self._connect_timeout)
        except httpx.HTTPError as exc:
            return BackendHealth(False, str(self._transport_error(exc)))
        if response.status_code == 503:
            return BackendHealth(False, str(self._loading()))
        if response.status_code >= 400:
            return BackendHealth(False, str(status_error(self.display, response.status_code)))
        try:
            self.discover()
        except BackendError as exc:
            return BackendHealth(False, str(exc))
        context = f" (context {self._max_model_len:,} tokens)" if self._max_model_len else ""
        return BackendHealth(True, f"{self.display} is up, serving {self._model}{context}", self._model)

    def _legacy_health(self) -> BackendHealth:
        probe = {"prompt": "Hi", "max_tokens": 1, "temperature": 0}
        try:
            self._send("POST", "/generate", probe, timeout=max(self._connect_timeout, 30)).close()
        except BackendRejected as exc:
            if exc.status_code in (404, 405):
                return BackendHealth(
                    False,
                    f"{self.display}'s server at {self.shown_url} has no /generate (HTTP {exc.status_code}): "
                    "vLLM itself speaks the OpenAI API, only the Model Garden container speaks the legacy "
                    "one. Set HYBRIDCHAT_VLLM_API=openai.",
                )
            return BackendHealth(False, str(exc))
        except BackendError as exc:
            return BackendHealth(False, str(exc))
        return BackendHealth(True, f"{self.display} answers /generate at {self.shown_url}", self._model)

    def _post_for_model(self, path: str, body_of: Callable[[str], dict[str, Any]]) -> httpx.Response:
        """POST for the served model: an open (streaming) response of a success. A 404 "model
        does not exist" re-discovers the name once (the server restarted with another)."""
        try:
            return self._send_retrying("POST", path, body_of(self.served_model()))
        except ModelNotFound:
            self.discover()
            return self._send_retrying("POST", path, body_of(self.served_model()))

    @contextmanager
    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Iterator[httpx.Response]:
        """Send with retries; yield the open (streaming) response of a success."""
        with closing(self._send_retrying(method, path, body)) as response:
            yield response

    def _send_retrying(self, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
        log.debug("%s %s%s", method, self.shown_url, path)
        for attempt in self._retrying.copy():  # a copy per call: Retrying keeps state
            with attempt:
                return self._send(method, path, body)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _send(self, method: str, path: str, body: dict[str, Any] | None, timeout: float | None = None) -> httpx.Response:
        request = self._http.build_request(
            method, f"{self.base_url}{path}", json=body, **({"timeout": timeout} if timeout else {})
        )
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
        raise self._refusal(response.status_code, detail)

    def _refusal(self, status: int, detail: str | None) -> BackendError:
        """Our own sentence for an error status; the server's reason (its first line: later ones
        may echo the request) only goes to the log."""
        reason = shorten((detail or "(no message)").splitlines()[0], 160)
        log.warning("%s answered HTTP %s: %s", self.display, status, reason)
        if status == 503:
            return self._loading()
        if status == 404 and detail and "does not exist" in detail:
            return ModelNotFound(
                f"{self.display}'s server does not serve the model {self._model!r}.",
                backend=self.display,
                status_code=status,
            )
        found = _CONTEXT_LIMIT.search(detail or "") if status == 400 else None
        if found:
            self._max_model_len = int(found.group(1) or found.group(2))
            size = _PROMPT_SIZE.search(detail or "")
            return ContextOverflow(
                f"This conversation is too long for {self.display}'s context "
                f"({self._max_model_len:,} tokens). Start a new chat, or switch model.",
                backend=self.display,
                status_code=status,
                limit=self._max_model_len,
                prompt_tokens=int(size.group(1)) if size else None,
            )
        return status_error(self.display, status)

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
                    # vLLM's own text ("EngineCore encountered an issue. See stack trace…") is
                    # for its operator, not a visitor.
                    log.warning("%s failed mid-reply: %s", self.display, shorten(message.splitlines()[0], 160))
                    raise BadResponse(
                        f"{self.display}'s server failed mid-reply; it may be restarting. "
                        "Try again in a minute, or switch model.",
                        backend=self.display,
                    )
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
        # vLLM listens only once its weights are loaded: "not listening" may mean "starting".
        return BackendUnavailable(
            f"{self.display} is not reachable at {self.shown_url} ({type(exc).__name__}). "
            "Is the server running? A server just started listens only once its model has loaded "
            "(minutes for Gemma): try Gemini meanwhile.",
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
    """Gemma on vLLM as a chat backend; its label names the model the server really serves."""

    def __init__(self, client: VllmClient, *, name: str = "gemma", label: str = "Gemma", template: Template = "gemma"):
        self.client = client
        self.name = name
        self.kind = label
        self.template = template

    @property
    def label(self) -> str:  # type: ignore[override]
        served = self.client.known_model
        return f"{self.kind} ({shorten(served, 80)})" if served else self.kind

    def stream(
        self, message: str, history: Iterable[Any], params: GenerationParams | None = None
    ) -> Iterator[str]:
        params = params or GenerationParams()
        if self.client.api == "openai":
            messages = process_message_openai(message, history, params.system_prompt)
            return ReplyStream(self.client.stream_chat(messages, params))
        # /generate has no streaming: the whole reply comes as one piece.
        prompt = process_message_gemma(message, history, params.system_prompt, self.template)

        def whole_reply() -> Iterator[str | Finish]:
            reply, finish = self.client.complete_prompt(prompt, params)
            yield reply
            if finish is not None:
                yield Finish(finish)

        return ReplyStream(whole_reply())

    def health(self) -> BackendHealth:
        return self.client.health()

    def context_window(self) -> ContextWindow | None:
        return self.client.context_window()

    def count_tokens(self, message: str, history: Iterable[Any], params: GenerationParams) -> int:
        history = list(history)
        if self.client.api == "openai":
            counted = self.client.count_tokens(messages=process_message_openai(message, history, params.system_prompt))
        else:
            counted = self.client.count_tokens(
                prompt=process_message_gemma(message, history, params.system_prompt, self.template)
            )
        return counted if counted is not None else estimate_tokens(message, history, params.system_prompt)


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
