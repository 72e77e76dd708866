"""Self-hosted Gemma served by vLLM, over either of its two wire protocols.

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

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from functools import lru_cache
from typing import Any, Literal, TypeVar

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel, ValidationError

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
from hybridchat.history import Message, Template, gemma_prompt, looks_like_gemma_prompt, openai_messages
from hybridchat.protocols import legacy
from hybridchat.protocols import openai as protocol
from hybridchat.redact import redact_url

log = logging.getLogger(__name__)
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

HEALTH_PATH = "/health"  # vLLM's readiness route; the Kubernetes probes use it too
# vLLM takes any key unless started with --api-key; an explicit one keeps the SDK from
# sending a learner's OPENAI_API_KEY to a self-hosted server.
NO_API_KEY = "EMPTY"
# Chats go through the client's low-level post, not chat.completions.create: create() walks
# every message of a request with type introspection, ~70 ms for a 200-turn chat on 2 cores
# (bench/); post() sends the same body, with the same streaming, parsing and errors.
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
    """A client for a vLLM server; shared by ``VllmBackend`` and ``call_gemma_model``."""

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
        retry: RetryPolicy | None = None,
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
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._openai = openai.OpenAI(
            base_url=f"{self.base_url}/v1",
            api_key=NO_API_KEY,
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
        )

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
        counted = self._parse(protocol.TokenizeResponse, answer)
        self._max_model_len = counted.max_model_len or self._max_model_len
        return counted.count

    def stream_chat(self, messages: list[dict[str, str]], params: GenerationParams) -> Iterator[str | Usage | Finish]:
        """Stream a chat reply (OpenAI protocol only); the server's token counts and finish
        reason come last. A stream that ends without a finish reason was cut off."""
        stream = self._for_model(lambda model: self._openai.post(
            "/chat/completions",
            body={"model": model, "messages": messages, "stream": True, "stream_options": {"include_usage": True},
                  **_sampling(params, params.stop)},
            cast_to=ChatCompletion,
            stream=True,
            stream_cls=openai.Stream[ChatCompletionChunk],
        ))
        produced, usage = False, None
        finish: str | None = None  # vLLM adds "abort" to the SDK's reasons
        with closing(stream), self._errors(mid_reply=True):
            for chunk in stream:
                for choice in chunk.choices or []:
                    if choice.delta and choice.delta.content:
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
        if finish is None:
            raise BadResponse(f"{self.display}'s reply was cut off: the stream ended early.", backend=self.display)
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
        ))
        with self._errors():
            choice = completion.choices[0] if completion.choices else None
            text = choice.message.content if choice and choice.message else None
            if not text:
                raise self._empty()
            counted = completion.usage
            usage = Usage(counted.prompt_tokens, counted.completion_tokens) if counted else None
            return ReplyStream.whole(text, usage, choice.finish_reason if choice else None)

    def complete_prompt(self, prompt: str, params: GenerationParams) -> tuple[str, str | None]:
        """Complete a raw prompt (``/v1/completions`` or legacy ``/generate``): only the new
        reply, and the server's finish reason (``None``: not reported)."""
        template = looks_like_gemma_prompt(prompt)
        stop = params.stop or (_TEMPLATE_STOPS[template] if template else ())
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
                lambda model: self._openai.completions.create(model=model, prompt=prompt, **_sampling(params, stop))
            )
            with self._errors():
                if not completion.choices:
                    raise self._empty()
                raw, finish = completion.choices[0].text or "", completion.choices[0].finish_reason
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
            self._call(self._openai.get, f"{self.base_url}{HEALTH_PATH}", cast_to=str,
                       options={"timeout": self._connect_timeout})
            self.discover()
        except BackendError as exc:
            return BackendHealth(False, str(exc))
        context = f" (context {self._max_model_len:,} tokens)" if self._max_model_len else ""
        return BackendHealth(True, f"{self.display} is up, serving {self._model}{context}", self._model)

    def _legacy_health(self) -> BackendHealth:
        probe = {"prompt": "Hi", "max_tokens": 1, "temperature": 0}
        try:
            self._call(self._openai.post, f"{self.base_url}/generate", body=probe, cast_to=object,
                       options={"timeout": max(self._connect_timeout, 30)})
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
                    f"{self.display} stopped answering mid-reply (connection lost).", backend=self.display
                ) from None
            raise self._unreachable(exc.__cause__) from None
        except openai.APIError as exc:  # an error event inside the stream
            # vLLM's own text ("EngineCore encountered an issue. See stack trace…") is for its
            # operator, not a visitor.
            log.warning("%s failed mid-reply: %s", self.display, shorten(exc.message.splitlines()[0], 160))
            raise BadResponse(
                f"{self.display}'s server failed mid-reply; it may be restarting. "
                "Try again in a minute, or switch model.",
                backend=self.display,
            ) from None
        except json.JSONDecodeError:
            raise BadResponse(f"{self.display} sent an answer that is not valid JSON.", backend=self.display) from None
        except (AttributeError, TypeError):  # the SDK does not validate: a field of the wrong shape
            raise self._unreadable("body") from None

    def _parse(self, schema: type[M], payload: Any) -> M:
        try:
            return schema.model_validate(payload)
        except ValidationError as exc:
            raise self._unreadable(".".join(map(str, exc.errors()[0]["loc"])) or "body") from None

    def _unreadable(self, field: str) -> BadResponse:
        return BadResponse(
            f"{self.display} sent an answer hybridchat cannot read (bad '{field}').", backend=self.display
        )

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

    def _unreachable(self, cause: BaseException | None) -> BackendUnavailable:
        # vLLM listens only once its weights are loaded: "not listening" may mean "starting".
        return BackendUnavailable(
            f"{self.display} is not reachable at {self.shown_url} ({type(cause or self).__name__}). "
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
        return _label(self.kind, self.client.known_model)

    def stream(self, messages: Sequence[Message], params: GenerationParams) -> ReplyStream:
        if self.client.api == "openai":
            return ReplyStream(self.client.stream_chat(openai_messages(messages, params.system_prompt), params))
        # /generate has no streaming: the whole reply comes as one piece.
        prompt = gemma_prompt(messages, params.system_prompt, self.template)

        def whole_reply() -> Iterator[str | Finish]:
            reply, finish = self.client.complete_prompt(prompt, params)
            yield reply
            if finish is not None:
                yield Finish(finish)

        return ReplyStream(whole_reply())

    def answer(self, messages: Sequence[Message], params: GenerationParams) -> ReplyStream:
        if self.client.api == "openai":
            return self.client.chat(openai_messages(messages, params.system_prompt), params)
        return self.stream(messages, params)  # /generate answers whole already

    def health(self) -> BackendHealth:
        return self.client.health()

    def context_window(self) -> ContextWindow | None:
        return self.client.context_window()

    def count_tokens(self, messages: Sequence[Message], params: GenerationParams) -> int:
        if self.client.api == "openai":
            counted = self.client.count_tokens(messages=openai_messages(messages, params.system_prompt))
        else:
            counted = self.client.count_tokens(prompt=gemma_prompt(messages, params.system_prompt, self.template))
        return counted if counted is not None else estimate_tokens(messages, params.system_prompt)


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
        return client.complete_prompt(prompt, params)[0]
    with closing(VllmClient.from_settings(Settings())) as owned:
        return owned.complete_prompt(prompt, params)[0]


@lru_cache(maxsize=64)  # read for every streamed piece; the served name rarely changes
def _label(kind: str, served: str | None) -> str:
    return f"{kind} ({shorten(served, 80)})" if served else kind


def _error_detail(body: object) -> str | None:
    """The message of an error body as the SDK keeps it: vLLM's ``error`` object, or its
    older flat shape (``{"object": "error", "message": …}``)."""
    message = body.get("message") if isinstance(body, dict) else None
    return message if isinstance(message, str) else None


def _sampling(params: GenerationParams, stop: Iterable[str]) -> dict[str, Any]:
    return {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
        "stop": list(stop) or None,
    }
