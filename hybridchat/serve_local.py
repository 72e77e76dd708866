"""``hybridchat serve-local``: the local model behind the same HTTP APIs as production.

One server on 127.0.0.1 stands in for both models, so the app, the notebooks and the tests
reach "Gemma" and "Gemini" through their real clients over real HTTP, with no cloud:

* vLLM's OpenAI-compatible API: ``GET /health``, ``GET /v1/models``,
  ``POST /v1/chat/completions`` and ``POST /v1/completions`` (both stream as SSE);
* with ``legacy``, the Model Garden container's ``POST /generate`` (answer echoes the prompt),
  which the codelab's Gemma served; without, HTTP 404 there, as vLLM's own image answers;
* Gemini's REST API as ``google-genai`` calls it, in both URL forms —
  ``/{version}/models/{model}:generateContent`` (API key) and
  ``/{version}/projects/{p}/locations/{l}/publishers/google/models/{model}:generateContent``
  (Vertex AI) — plus ``:streamGenerateContent?alt=sse`` and ``GET`` of the model.

Every answer names the stand-in (model ``local-stand-in/<model>``) so nobody mistakes it for
Gemma or Gemini. Where a visitor would notice, it behaves as vLLM 0.32 does (the same scenario
tests run against both): it listens only once its model has loaded; ``/v1/models`` gives the
context length (``max_model_len``) and ``/tokenize`` counts tokens; a prompt longer than the
context, ``max_tokens`` above it and an unknown model name get vLLM's own errors; a reply
stopped by ``max_tokens`` ends with ``finish_reason: "length"``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import time
from collections import deque
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from google.genai import types
from pydantic import ValidationError

from hybridchat import serve_local_wire as wire
from hybridchat import templates, vllm_metrics
from hybridchat.backends.base import GenerationParams, ReplyStream
from hybridchat.backends.local import LocalModel
from hybridchat.errors import ContextOverflow
from hybridchat.history import normalize_history
from hybridchat.protocols import gemini as gemini_wire
from hybridchat.protocols import legacy as legacy_wire
from hybridchat.protocols import openai as openai_wire

log = logging.getLogger(__name__)

STAND_IN_PREFIX = "local-stand-in/"
_DEFAULT_MAX_TOKENS = 512


class _Refused(Exception):
    """A request refused with ``status``, worded as vLLM words it."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param


def create_app(
    model: LocalModel, served_model_name: str | None = None, api_key: str | None = None, *, legacy: bool = False
) -> FastAPI:
    """The stand-in server for a loaded ``model`` (``serve`` loads it before listening, as vLLM
    does), under ``served_model_name`` (default ``local-stand-in/<model>``); with ``api_key``,
    its vLLM routes under ``/v1`` want it as a bearer token, as vLLM's ``--api-key`` does;
    ``legacy``: it also answers ``/generate``, as the Model Garden container does.

    Its ``/metrics`` has vLLM's queue gauges: the model writes one reply at a time, so the
    others wait.

    Unlike vLLM, it keeps its last generation requests, with their replies, for the workshop's
    checkers: ``GET /stand-in/requests?after=ID`` (memory only, on 127.0.0.1 by default)."""
    app = FastAPI(title="hybridchat local stand-in")
    served = served_model_name or f"{STAND_IN_PREFIX}{model.name}"
    load = vllm_metrics.Exported(served)
    app.add_middleware(_Generating, load=load)
    recorded: deque[dict[str, Any]] = deque(maxlen=50)
    ids = itertools.count(1)

    def record(path: str, params: GenerationParams, reply: ReplyStream, **sent: Any) -> ReplyStream:
        entry = {"id": next(ids), "path": path, **sent, "temperature": params.temperature, "top_p": params.top_p,
                 "max_tokens": params.max_tokens, "stop": list(params.stop), "reply": None}
        recorded.append(entry)
        return _Kept(reply, entry)

    if api_key:
        expected = hashlib.sha256(api_key.encode()).digest()

        @app.middleware("http")
        async def require_key(request: Request, call_next: Any) -> Response:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            given_hash = hashlib.sha256(given.encode()).digest()
            matches = scheme.lower() == "bearer" and hmac.compare_digest(given_hash, expected)
            if request.url.path.startswith("/v1/") and _speaks_vllm(request) and not matches:
                return JSONResponse({"error": "Unauthorized"}, status_code=401)  # vLLM's answer, word for word
            response: Response = await call_next(request)
            return response

    @app.get("/stand-in/requests")
    def requests(after: int = 0) -> list[dict[str, Any]]:
        return [entry for entry in list(recorded) if entry["id"] > after]

    @app.exception_handler(_Refused)
    def _refused(request: Request, exc: _Refused) -> JSONResponse:
        return _error(request, exc.status, str(exc), exc.param)

    @app.exception_handler(ContextOverflow)
    def _overflow(request: Request, exc: ContextOverflow) -> JSONResponse:
        if _speaks_vllm(request):
            message = (
                f"This model's maximum context length is {exc.limit} tokens. However, your prompt "
                f"contains {exc.prompt_tokens} input tokens, which exceeds this limit even without "
                "any output tokens. Please reduce the length of the input prompt. "
                f"(parameter=input_tokens, value={exc.prompt_tokens})"
            )
            return _error(request, 400, message, "input_tokens")
        message = (
            f"The input token count ({exc.prompt_tokens}) exceeds the maximum number of tokens "
            f"allowed ({_gemini_input_limit(model)})."
        )
        return _error(request, 400, message)

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if part != "body")
        return _error(request, 400, f"invalid request: {where}: {first['msg']}")

    def check_model(name: str | None) -> None:
        # vLLM takes a request without a model as one for the model it serves.
        if name and name != served:
            raise _Refused(404, f"The model `{name}` does not exist.", "model")

    def checked(max_tokens: int | None) -> int | None:
        if max_tokens is not None and max_tokens > model.context_length:
            raise _Refused(
                400,
                f"max_tokens={max_tokens} cannot be greater than max_model_len={model.context_length}. "
                f"Please request fewer output tokens. (parameter=max_tokens, value={max_tokens})",
                "max_tokens",
            )
        return max_tokens

    @app.get("/health")
    def health() -> Response:
        return Response(status_code=200)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(load.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    def models() -> openai_wire.ModelList:
        card = openai_wire.ModelCard(
            id=served, created=int(time.time()), root=model.name, max_model_len=model.context_length
        )
        return openai_wire.ModelList(data=[card])

    @app.post("/tokenize")
    def tokenize(body: openai_wire.TokenizeRequest) -> openai_wire.TokenizeResponse:
        check_model(body.model)
        if body.messages is not None:
            history = [message.model_dump() for message in body.messages]
            ids = model.token_ids([{"role": m.role, "content": m.content} for m in normalize_history(history)])
        else:
            ids = model.token_ids(body.prompt or "")
        return openai_wire.TokenizeResponse(count=len(ids), max_model_len=model.context_length, tokens=ids)

    @app.post("/v1/chat/completions", response_model=None)
    def chat_completions(body: openai_wire.ChatCompletionRequest) -> Any:
        check_model(body.model)
        history = [message.model_dump() for message in body.messages]
        messages = [{"role": m.role, "content": m.content} for m in normalize_history(history)]
        max_tokens = checked(body.max_completion_tokens or body.max_tokens)
        params = _params(body.temperature, body.top_p, max_tokens, body.stop)
        reply = record(
            "/v1/chat/completions", params, model.stream(messages, params), model=body.model, messages=messages
        )
        return wire.openai_answer(reply, served, body)

    @app.post("/v1/completions", response_model=None)
    def completions(body: openai_wire.CompletionRequest) -> Any:
        check_model(body.model)
        params = _params(body.temperature, body.top_p, checked(body.max_tokens), body.stop)
        reply = record("/v1/completions", params, model.stream(_conversation_of(body.prompt), params),
                       model=body.model, prompt=body.prompt)
        return wire.openai_answer(reply, served, body)

    def generate(body: legacy_wire.GenerateRequest) -> legacy_wire.GenerateResponse:
        params = _params(body.temperature, body.top_p, checked(body.max_tokens), body.stop)
        pieces = model.stream(_conversation_of(body.prompt), params)
        reply = "".join(record("/generate", params, pieces, prompt=body.prompt))
        return legacy_wire.GenerateResponse(
            predictions=[reply if body.raw_response else legacy_wire.echoed(body.prompt, reply)])

    if legacy:
        app.post("/generate")(generate)

    @app.get("/{version}/models/{name}")
    @app.get("/{version}/publishers/google/models/{name}")  # Vertex AI's models.get
    @app.get("/{version}/projects/{project}/locations/{location}/publishers/google/models/{name}")
    def gemini_model(name: str, request: Request) -> Response:
        prefix = "publishers/google/models/" if "/publishers/" in request.url.path else "models/"
        found = types.Model(
            name=f"{prefix}{name}",
            display_name=f"{served} (standing in for {name})",
            version=served,
            input_token_limit=_gemini_input_limit(model),
            output_token_limit=model.context_length - _gemini_input_limit(model),
        )
        return Response(found.model_dump_json(by_alias=True, exclude_none=True), media_type="application/json")

    @app.post("/{version}/models/{target}")
    @app.post("/{version}/projects/{project}/locations/{location}/publishers/google/models/{target}")
    def gemini_generate(target: str, body: gemini_wire.GenerateContentRequest, request: Request) -> Response:
        name, _, action = target.rpartition(":")
        if action not in ("generateContent", "streamGenerateContent", "countTokens"):
            return _error(request, 404, f"unknown method {action!r}")
        messages = _gemini_messages(body)
        if action == "countTokens":
            counted = types.CountTokensResponse(total_tokens=len(model.token_ids(messages)))
            return Response(counted.model_dump_json(by_alias=True, exclude_none=True), media_type="application/json")
        config = body.generation_config or types.GenerationConfig()
        prompt_tokens = len(model.token_ids(messages))
        if prompt_tokens > _gemini_input_limit(model):
            raise ContextOverflow("", limit=_gemini_input_limit(model), prompt_tokens=prompt_tokens)
        params = _params(config.temperature, config.top_p, config.max_output_tokens, config.stop_sequences)
        version = f"{served} (standing in for {name})"
        contents = [{"role": c.role, "text": "".join(p.text or "" for p in c.parts or [])} for c in body.contents]
        reply = record(f"gemini:{action}", params, model.stream(messages, params), model=name, contents=contents)
        if action == "streamGenerateContent":
            return wire.sse(wire.gemini_chunks(reply, version), separator="\r\n\r\n")
        text = "".join(reply)
        return Response(gemini_wire.dump(wire.gemini_response(text, reply, version)), media_type="application/json")

    return app


class _Generating:
    """Counts the generation requests until each answer is sent or its client has gone (an
    ASGI middleware: a streamed answer ends after the endpoint returns), into ``load``."""

    PATHS = ("completions", "/generate", "generatecontent")  # lower case: streamGenerateContent too

    def __init__(self, app: Any, load: vllm_metrics.Exported):
        self.app, self.load = app, load
        self.replies = 0  # one event loop: no lock

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].lower().endswith(self.PATHS):
            await self.app(scope, receive, send)
            return
        self._count(1)
        try:
            await self.app(scope, receive, send)
        finally:
            self._count(-1)

    def _count(self, change: int) -> None:
        self.replies += change
        self.load.running, self.load.waiting = min(self.replies, 1), max(self.replies - 1, 0)


class _Kept(ReplyStream):
    """A reply that, once read to the end, is also kept in its request's record."""

    def __init__(self, reply: ReplyStream, entry: dict[str, Any]):
        super().__init__(iter(()))
        self._reply, self._entry = reply, entry
        self._text: list[str] = []

    def __next__(self) -> str:
        try:
            piece = next(self._reply)
        except StopIteration:
            self.usage, self.finish_reason = self._reply.usage, self._reply.finish_reason
            self._entry["reply"] = "".join(self._text)
            raise
        self._text.append(piece)
        return piece

    def close(self) -> None:
        self._reply.close()


def _gemini_input_limit(model: LocalModel) -> int:
    """Gemini's input limit leaves out the reply; the local model's context holds both, so the
    stand-in offers half of it to each."""
    return model.context_length // 2


def _params(temperature: float | None, top_p: float | None, max_tokens: int | None, stop: Any) -> GenerationParams:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    try:
        return GenerationParams(
            temperature=1.0 if temperature is None else temperature,
            top_p=1.0 if top_p is None else top_p,
            max_tokens=max_tokens or _DEFAULT_MAX_TOKENS,
            stop=tuple(stops),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise RequestValidationError([{**first, "loc": ("body", *first["loc"])}]) from None


def _conversation_of(prompt: str) -> str | list[dict[str, str]]:
    """A raw prompt as the stand-in should see it: a Gemma-template prompt becomes chat
    messages for the stand-in's own template, so a model that does not know Gemma's
    control tokens still answers the conversation; any other prompt is continued as is."""
    template = templates.made_by(prompt)
    if template is None:
        return prompt
    return [{"role": role, "content": text} for role, text in templates.parse(template, prompt)]


def _gemini_messages(body: gemini_wire.GenerateContentRequest) -> list[dict[str, str]]:
    def text(content: types.Content) -> str:
        return "".join(part.text or "" for part in content.parts or [])

    history: list[dict[str, str]] = []
    if body.system_instruction is not None:
        history.append({"role": "system", "content": text(body.system_instruction)})
    history += [{"role": content.role or "user", "content": text(content)} for content in body.contents]
    return [{"role": m.role, "content": m.content} for m in normalize_history(history)]


def _speaks_vllm(request: Request) -> bool:
    """Whether the request used vLLM's protocol (else Gemini's, whose paths can start /v1/ too)."""
    path = request.url.path
    return path.startswith(("/v1/", "/generate", "/health", "/tokenize")) and not path.startswith("/v1/models/")


def _error(request: Request, status: int, message: str, param: str | None = None) -> JSONResponse:
    """An error body in the protocol the request used."""
    if _speaks_vllm(request):
        info = openai_wire.ErrorInfo(message=message, type=_ERROR_TYPES.get(status, "Error"), param=param, code=status)
        return JSONResponse(openai_wire.ErrorResponse(error=info).model_dump(), status_code=status)
    status_name = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 503: "UNAVAILABLE"}.get(status, "INTERNAL")
    return JSONResponse(gemini_wire.error_body(status, status_name, message), status_code=status)


_ERROR_TYPES = {
    400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError", 503: "ServiceUnavailableError"
}


def serve(
    model: LocalModel,
    host: str,
    port: int,
    log_level: str = "info",
    served_model_name: str | None = None,
    api_key: str | None = None,
    legacy: bool = False,
) -> None:
    """Run the stand-in server for a loaded model until interrupted. Stopped, it breaks off the
    replies still streaming after a second, as vLLM does, rather than finishing them."""
    import uvicorn

    uvicorn.run(
        create_app(model, served_model_name, api_key, legacy=legacy),
        host=host,
        port=port,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=1,
    )

