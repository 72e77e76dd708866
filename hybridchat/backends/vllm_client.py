"""A client for vLLM's server, over either of its two wire protocols.

* ``openai`` (default): vLLM's OpenAI-compatible server, through the ``openai`` SDK as vLLM's
  docs call it (``OpenAI(base_url=…/v1)``): streamed chat, raw completions, ``/v1/models``;
  and vLLM's own ``/health`` and ``/tokenize`` through the same client.
* ``legacy``: the Vertex AI Model Garden container the codelab used — ``POST /generate``
  answering ``{"predictions": [text]}``, the text possibly echoing the prompt.

The SDK never retries (``max_retries=0``): transient failures follow the one ``RetryPolicy``
every backend follows. The SDK's errors become ``BackendError``s worded for the user in one
place (``VllmClient._errors``); the server's own text goes to the log. The served model's name
and context length come from ``/v1/models`` (re-asked when the server answers that the model
does not exist: it restarted under another name), exact token counts from ``/tokenize``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from typing import Any, Literal, TypeVar

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

from hybridchat import templates
from hybridchat.backends.base import (
    CONVERSATION_HEADER,
    BackendHealth,
    ContextWindow,
    Finish,
    GenerationParams,
    ReplyStream,
    RetryPolicy,
    Thought,
    Usage,
)
from hybridchat.backends.vllm_errors import VllmErrors
from hybridchat.config import Settings
from hybridchat.errors import (
    BackendError,
    BackendRejected,
    BackendUnavailable,
    BadResponse,
    ModelNotFound,
)
from hybridchat.history import gemma_output
from hybridchat.protocols import legacy
from hybridchat.protocols import openai as openai_wire
from hybridchat.redact import redact_url

log = logging.getLogger(__name__)
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

HEALTH_PATH = "/health"  # vLLM's readiness route; the Kubernetes probes use it too
# vLLM takes any key unless started with --api-key; an explicit one keeps the SDK from
# sending a learner's OPENAI_API_KEY to a self-hosted server.
NO_API_KEY = "EMPTY"


class VllmClient(VllmErrors):
    """A client for a vLLM server; shared by ``VllmBackend`` and ``call_gemma_model``."""

    def __init__(
        self,
        base_url: str,
        *,
        api: Literal["openai", "legacy"] = "openai",
        model: str | None = None,
        context_tokens: int | None = None,
        connect_timeout: float = 5.0,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        api_key: str | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.keyed = bool(api_key)
        self.shown_url = redact_url(self.base_url)  # for messages and logs: no password in it
        self.api = api
        self._configured = model
        self._model = model  # the name requests use: the configured one, else the discovered one
        self._context_tokens = context_tokens
        self._max_model_len: int | None = None  # from /v1/models, /tokenize or a refusal
        self._context_asked = False
        self._can_tokenize = api == "openai"
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._openai = openai.OpenAI(
            base_url=f"{self.base_url}/v1",
            api_key=api_key or NO_API_KEY,
            max_retries=0,
            timeout=openai.Timeout(timeout, connect=connect_timeout),
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
            retry=RetryPolicy.from_settings(settings),
            api_key=settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None,
        )

    @property
    def auth_headers(self) -> dict[str, str]:
        """What a request of one's own (``requests.post``) sends for the server's API key, if any."""
        return {"Authorization": f"Bearer {self._openai.api_key}"} if self.keyed else {}

    def close(self) -> None:
        self._openai.close()

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
        cards = self._retry.call(lambda: self._call(self._openai.models.list)).data or []
        if not cards:
            raise BadResponse("Gemma's server lists no model.")
        card = next((c for c in cards if c.id == self._configured), None) if self._configured else cards[0]
        if card is None:
            served = ", ".join(repr(c.id) for c in cards)
            raise ModelNotFound(
                f"Gemma's server does not serve {self._configured!r} (HYBRIDCHAT_GEMMA_MODEL); "
                f"it serves {served}. Fix the setting, or unset it to use what the server serves.",
                status_code=404,
            )
        self._model = card.id
        self._max_model_len = getattr(card, "max_model_len", None) or self._max_model_len  # vLLM's extension
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
            answer = self._for_model(
                lambda model: self._openai.post(
                    f"{self.base_url}/tokenize", body={"model": model, **payload}, cast_to=object
                )
            )
        except BackendRejected as exc:
            if exc.status_code in (404, 405) and not isinstance(exc, ModelNotFound):
                self._can_tokenize = False
                return None
            raise
        counted = self._parse(openai_wire.TokenizeResponse, answer)
        self._max_model_len = counted.max_model_len or self._max_model_len
        return counted.count

    # Chats go through the client's low-level post, not chat.completions.create: create() walks
    # every message of a request with type introspection, ~70 ms for a 200-turn chat on 2 cores
    # (bench/); post() sends the same body, with the same streaming, parsing and errors.
    def stream_chat(
        self, messages: list[dict[str, str]], params: GenerationParams
    ) -> Iterator[str | Thought | Usage | Finish]:
        """Stream a chat reply (OpenAI protocol only); the server's token counts and finish
        reason come last. A stream that ends without a finish reason was cut off."""
        stream = self._for_model(lambda model: self._openai.post(
            "/chat/completions",
            body={"model": model, "messages": messages, "stream": True, "stream_options": {"include_usage": True},
                  **_sampling(params, params.stop)},
            cast_to=ChatCompletion,
            stream=True,
            stream_cls=openai.Stream[ChatCompletionChunk],
            options=_routed(params),
        ))
        produced, usage = False, None
        finish: str | None = None  # vLLM adds "abort" to the SDK's reasons
        with closing(stream), self._errors(mid_reply=True):
            for chunk in stream:
                for choice in chunk.choices or []:
                    thinking = _reasoning(choice.delta)
                    if thinking:
                        produced = True
                        yield Thought(thinking)
                    if choice.delta and choice.delta.content:
                        produced = True
                        yield choice.delta.content
                    finish = choice.finish_reason or finish
                if chunk.usage is not None:
                    usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        if finish == "abort":
            raise BackendUnavailable(
                "Gemma's server stopped this reply (it is shutting down or restarting). "
                "Try again in a minute, or switch model.",
            )
        if finish is None:
            raise BadResponse("Gemma's reply was cut off: the stream ended early.")
        if not produced:
            raise self._empty()
        if usage is not None:
            yield usage
        yield Finish(finish)

    def chat(self, messages: list[dict[str, str]], params: GenerationParams) -> ReplyStream:
        """A chat reply in one blocking call (OpenAI protocol only)."""
        completion = self._for_model(lambda model: self._openai.post(
            "/chat/completions",
            body={"model": model, "messages": messages, **_sampling(params, params.stop)},
            cast_to=ChatCompletion,
            options=_routed(params),
        ))
        with self._errors():
            choice = completion.choices[0] if completion.choices else None
            text = choice.message.content if choice and choice.message else None
            thought = _reasoning(choice.message) if choice else None
            if not (text or thought):
                raise self._empty()
            counted = completion.usage
            usage = Usage(counted.prompt_tokens, counted.completion_tokens) if counted else None
            return ReplyStream.whole(text or "", usage, choice.finish_reason if choice else None, thought)

    def complete_prompt(self, prompt: str, params: GenerationParams) -> tuple[str, str | None, str]:
        """Complete a raw prompt (``/v1/completions`` or legacy ``/generate``): only the new
        reply, the server's finish reason (``None``: not reported), and the thought the model
        wrote before it (``""``: none)."""
        made = templates.made_by(prompt)
        stop = params.stop or (made.stops if made else ())
        if self.api == "legacy":
            body = {"prompt": prompt, **_sampling(params, stop)}
            answer = self._retry.call(
                lambda: self._call(self._openai.post, f"{self.base_url}/generate", body=body, cast_to=object)
            )
            predictions = self._parse(legacy.GenerateResponse, answer).predictions
            if not predictions:
                raise self._empty()
            raw, finish = predictions[0], None
        else:
            completion = self._for_model(
                lambda model: self._openai.completions.create(
                    model=model, prompt=prompt, **_sampling(params, stop),
                    # vLLM drops special tokens from a completion's text by default: a thought
                    # channel's markers with them, which would leave the thought inside the reply.
                    extra_body={"skip_special_tokens": False} if made is not None and made.thought else None,
                )
            )
            with self._errors():
                if not completion.choices:
                    raise self._empty()
                raw, finish = completion.choices[0].text or "", completion.choices[0].finish_reason
        thought, reply = gemma_output(raw, prompt)
        if not (reply or thought):
            raise self._empty()
        return reply, finish, thought

    def health(self) -> BackendHealth:
        """Whether a turn would work now, without retrying; never raises. OpenAI protocol:
        ``/health``, then the model named in settings among those ``/v1/models`` lists.
        Legacy: a one-token ``/generate`` (a server without it answers ``/health`` too)."""
        if self.api == "legacy":
            return self._legacy_health()
        try:
            self._call(self._openai.get, f"{self.base_url}{HEALTH_PATH}", cast_to=str,
                       options={"timeout": self._connect_timeout})
            self.discover()
        except BackendError as exc:
            return BackendHealth(False, str(exc))
        context = f" (context {self._max_model_len:,} tokens)" if self._max_model_len else ""
        return BackendHealth(True, f"Gemma is up, serving {self._model}{context}", self._model)

    def _legacy_health(self) -> BackendHealth:
        probe = {"prompt": "Hi", "max_tokens": 1, "temperature": 0}
        try:
            self._call(self._openai.post, f"{self.base_url}/generate", body=probe, cast_to=object,
                       options={"timeout": max(self._connect_timeout, 30)})
        except BackendRejected as exc:
            if exc.status_code in (404, 405):
                return BackendHealth(
                    False,
                    f"Gemma's server at {self.shown_url} has no /generate (HTTP {exc.status_code}): "
                    "vLLM itself speaks the OpenAI API, only the Model Garden container speaks the legacy "
                    "one. Set HYBRIDCHAT_VLLM_API=openai.",
                )
            return BackendHealth(False, str(exc))
        except BackendError as exc:
            return BackendHealth(False, str(exc))
        return BackendHealth(True, f"Gemma answers /generate at {self.shown_url}", self._model)

    def _for_model(self, send: Callable[[str], T]) -> T:
        """``send(model)`` for the served model, retried by the policy. A 404 "model does not
        exist" re-discovers the name once (the server restarted with another)."""
        try:
            return self._retry.call(lambda: self._call(send, self.served_model()))
        except ModelNotFound:
            self.discover()
            return self._retry.call(lambda: self._call(send, self.served_model()))

    def _call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        log.debug("%s at %s", getattr(method, "__name__", "request"), self.shown_url)
        with self._errors():
            return method(*args, **kwargs)


def _routed(params: GenerationParams) -> openai.RequestOptions:
    """The request's options: the conversation's header, where the turn has one."""
    return {"headers": {CONVERSATION_HEADER: params.conversation}} if params.conversation else {}


def _sampling(params: GenerationParams, stop: Iterable[str]) -> dict[str, Any]:
    return {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
        "stop": list(stop) or None,
    }


def _reasoning(message: object) -> str | None:
    """A thinking model's reasoning in a chat message or delta: where vLLM's reasoning parser
    puts it (``reasoning``; ``reasoning_content`` before vLLM 0.11), apart from the answer."""
    for name in ("reasoning", "reasoning_content"):
        found = getattr(message, name, None)
        if isinstance(found, str) and found:
            return found
    return None
