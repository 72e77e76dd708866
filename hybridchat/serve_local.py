"""``hybridchat serve-local``: the local model behind the same HTTP APIs as production.

One server on 127.0.0.1 stands in for both models, so the app, the notebooks and the tests
reach "Gemma" and "Gemini" through their real clients over real HTTP, with no cloud:

* vLLM's OpenAI-compatible API: ``GET /health``, ``GET /v1/models``,
  ``POST /v1/chat/completions`` and ``POST /v1/completions`` (both stream as SSE);
* the Model Garden container's legacy ``POST /generate`` (answer echoes the prompt);
* Gemini's REST API as ``google-genai`` calls it, in both URL forms —
  ``/{version}/models/{model}:generateContent`` (API key) and
  ``/{version}/projects/{p}/locations/{l}/publishers/google/models/{model}:generateContent``
  (Vertex AI) — plus ``:streamGenerateContent?alt=sse`` and ``GET`` of the model.

Every answer names the stand-in (model ``local-stand-in/<model>``) so nobody mistakes it for
Gemma or Gemini. Like vLLM, it answers 503 until its model has loaded.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from google.genai import types
from pydantic import ValidationError

from hybridchat.backends.base import GenerationParams
from hybridchat.backends.local import LocalModel
from hybridchat.history import looks_like_gemma_prompt, normalize_history, parse_gemma_prompt
from hybridchat.protocols import gemini as gemini_wire
from hybridchat.protocols import legacy, openai

log = logging.getLogger(__name__)

STAND_IN_PREFIX = "local-stand-in/"
_DEFAULT_MAX_TOKENS = 512


class _NotReady(Exception):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class _ModelSlot:
    """The model, loaded in the background so the server answers (503) from the start."""

    def __init__(self, model: LocalModel | Callable[[], LocalModel]):
        self._model = model if isinstance(model, LocalModel) else None
        self._loader = None if isinstance(model, LocalModel) else model
        self._failure: str | None = None

    def start_loading(self) -> None:
        if self._loader is not None:
            threading.Thread(target=self._load, name="load-local-model", daemon=True).start()

    def _load(self) -> None:
        try:
            self._model = self._loader()  # type: ignore[misc]
        except Exception as exc:
            log.error("the local model failed to load: %s", exc)
            self._failure = f"the local model failed to load ({type(exc).__name__}: {exc})"

    def get(self) -> LocalModel:
        if self._model is not None:
            return self._model
        if self._failure is not None:
            raise _NotReady(self._failure, 500)
        raise _NotReady("the local model is still loading", 503)


def create_app(model: LocalModel | Callable[[], LocalModel]) -> FastAPI:
    """The stand-in server for ``model`` (or a loader for it, run in the background)."""
    slot = _ModelSlot(model)
    app = FastAPI(title="hybridchat local stand-in", on_startup=[slot.start_loading])

    @app.exception_handler(_NotReady)
    def _not_ready(request: Request, exc: _NotReady) -> JSONResponse:
        return _error(request, exc.status, str(exc))

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if part != "body")
        return _error(request, 400, f"invalid request: {where}: {first['msg']}")

    @app.get("/health")
    def health() -> Response:
        slot.get()
        return Response(status_code=200)

    @app.get("/v1/models")
    def models() -> openai.ModelList:
        served = slot.get()
        return openai.ModelList(data=[openai.ModelCard(id=_served_name(served), created=int(time.time()))])

    @app.post("/v1/chat/completions", response_model=None)
    def chat_completions(body: openai.ChatCompletionRequest) -> Any:
        served = slot.get()
        history = [message.model_dump() for message in body.messages]
        messages = [{"role": m.role, "content": m.content} for m in normalize_history(history)]
        params = _params(body.temperature, body.top_p, body.max_completion_tokens or body.max_tokens, body.stop)
        ident, created, name = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), _served_name(served)
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return _sse(_chat_chunks(served, messages, params, ident, created, name, usage))
        reply = "".join(served.stream(messages, params))
        return openai.ChatCompletion(
            id=ident,
            created=created,
            model=name,
            choices=[openai.ChatChoice(message=openai.AssistantMessage(content=reply), finish_reason="stop")],
            usage=_usage(served, messages, reply),
        )

    @app.post("/v1/completions", response_model=None)
    def completions(body: openai.CompletionRequest) -> Any:
        served = slot.get()
        conversation = _conversation_of(body.prompt)
        params = _params(body.temperature, body.top_p, body.max_tokens, body.stop)
        ident, created, name = f"cmpl-{uuid.uuid4().hex}", int(time.time()), _served_name(served)
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return _sse(_completion_chunks(served, conversation, params, ident, created, name, usage))
        reply = "".join(served.stream(conversation, params))
        return openai.Completion(
            id=ident,
            created=created,
            model=name,
            choices=[openai.CompletionChoice(text=reply, finish_reason="stop")],
            usage=_usage(served, conversation, reply),
        )

    @app.post("/generate")
    def generate(body: legacy.GenerateRequest) -> legacy.GenerateResponse:
        served = slot.get()
        params = _params(body.temperature, body.top_p, body.max_tokens, body.stop)
        reply = "".join(served.stream(_conversation_of(body.prompt), params))
        return legacy.GenerateResponse(predictions=[reply if body.raw_response else legacy.echoed(body.prompt, reply)])

    @app.get("/{version}/models/{model}")
    @app.get("/{version}/publishers/google/models/{model}")  # Vertex AI's models.get
    @app.get("/{version}/projects/{project}/locations/{location}/publishers/google/models/{model}")
    def gemini_model(model: str, request: Request) -> Response:
        served = slot.get()
        prefix = "publishers/google/models/" if "/publishers/" in request.url.path else "models/"
        found = types.Model(
            name=f"{prefix}{model}",
            display_name=f"{_served_name(served)} (standing in for {model})",
            version=_served_name(served),
        )
        return Response(found.model_dump_json(by_alias=True, exclude_none=True), media_type="application/json")

    @app.post("/{version}/models/{target}")
    @app.post("/{version}/projects/{project}/locations/{location}/publishers/google/models/{target}")
    def gemini_generate(target: str, body: gemini_wire.GenerateContentRequest, request: Request) -> Response:
        served = slot.get()
        model, _, action = target.rpartition(":")
        if action not in ("generateContent", "streamGenerateContent"):
            return _error(request, 404, f"unknown method {action!r}")
        messages = _gemini_messages(body)
        config = body.generation_config or types.GenerationConfig()
        params = _params(config.temperature, config.top_p, config.max_output_tokens, config.stop_sequences)
        version = f"{_served_name(served)} (standing in for {model})"
        if action == "streamGenerateContent":
            return _sse(_gemini_chunks(served, messages, params, version), separator="\r\n\r\n")
        reply = "".join(served.stream(messages, params))
        done = _gemini_response(reply, types.FinishReason.STOP, version, served, messages)
        return Response(gemini_wire.dump(done), media_type="application/json")

    return app


def _served_name(model: LocalModel) -> str:
    return f"{STAND_IN_PREFIX}{model.name}"


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
    template = looks_like_gemma_prompt(prompt)
    if template is None:
        return prompt
    return [{"role": m.role, "content": m.content} for m in parse_gemma_prompt(prompt, template)]


def _gemini_messages(body: gemini_wire.GenerateContentRequest) -> list[dict[str, str]]:
    def text(content: types.Content) -> str:
        return "".join(part.text or "" for part in content.parts or [])

    history: list[dict[str, str]] = []
    if body.system_instruction is not None:
        history.append({"role": "system", "content": text(body.system_instruction)})
    history += [{"role": content.role or "user", "content": text(content)} for content in body.contents]
    return [{"role": m.role, "content": m.content} for m in normalize_history(history)]


def _usage(model: LocalModel, conversation: str | list[dict[str, str]], reply: str) -> openai.Usage:
    prompt_tokens, completion_tokens = model.count_tokens(conversation), model.count_tokens(reply)
    return openai.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def _chat_chunks(
    model: LocalModel,
    messages: list[dict[str, str]],
    params: GenerationParams,
    ident: str,
    created: int,
    name: str,
    include_usage: bool,
) -> Iterator[str]:
    def chunk(delta: openai.Delta, finish: str | None = None) -> str:
        choice = openai.ChatChunkChoice(delta=delta, finish_reason=finish)
        return openai.ChatCompletionChunk(id=ident, created=created, model=name, choices=[choice]).model_dump_json()

    yield chunk(openai.Delta(role="assistant", content=""))
    reply = []
    for piece in model.stream(messages, params):
        reply.append(piece)
        yield chunk(openai.Delta(content=piece))
    yield chunk(openai.Delta(), finish="stop")
    if include_usage:
        usage = _usage(model, messages, "".join(reply))
        yield openai.ChatCompletionChunk(id=ident, created=created, model=name, choices=[], usage=usage).model_dump_json()
    yield "[DONE]"


def _completion_chunks(
    model: LocalModel,
    conversation: str | list[dict[str, str]],
    params: GenerationParams,
    ident: str,
    created: int,
    name: str,
    include_usage: bool,
) -> Iterator[str]:
    def chunk(text: str, finish: str | None = None, usage: openai.Usage | None = None) -> str:
        choices = [] if usage else [openai.CompletionChoice(text=text, finish_reason=finish)]
        return openai.Completion(id=ident, created=created, model=name, choices=choices, usage=usage).model_dump_json()

    reply = []
    for piece in model.stream(conversation, params):
        reply.append(piece)
        yield chunk(piece)
    yield chunk("", finish="stop")
    if include_usage:
        yield chunk("", usage=_usage(model, conversation, "".join(reply)))
    yield "[DONE]"


def _gemini_chunks(
    model: LocalModel, messages: list[dict[str, str]], params: GenerationParams, version: str
) -> Iterator[str]:
    reply = []
    for piece in model.stream(messages, params):
        reply.append(piece)
        yield gemini_wire.dump(_gemini_response(piece, None, version))
    yield gemini_wire.dump(_gemini_response("", types.FinishReason.STOP, version, model, messages, "".join(reply)))


def _gemini_response(
    text: str,
    finish: types.FinishReason | None,
    version: str,
    model: LocalModel | None = None,
    messages: list[dict[str, str]] | None = None,
    whole_reply: str | None = None,
) -> types.GenerateContentResponse:
    usage = None
    if model is not None and messages is not None:
        counted = _usage(model, messages, text if whole_reply is None else whole_reply)
        usage = types.GenerateContentResponseUsageMetadata(
            prompt_token_count=counted.prompt_tokens,
            candidates_token_count=counted.completion_tokens,
            total_token_count=counted.total_tokens,
        )
    return types.GenerateContentResponse(
        candidates=[
            types.Candidate(
                content=types.Content(role="model", parts=[types.Part(text=text)]),
                finish_reason=finish,
                index=0,
            )
        ],
        usage_metadata=usage,
        model_version=version,
    )


def _sse(events: Iterator[str], separator: str = "\n\n") -> StreamingResponse:
    def frames() -> Iterator[str]:
        try:
            for event in events:
                yield f"data: {event}{separator}"
        except Exception as exc:  # headers are sent: report in-band, as vLLM does
            log.exception("generation failed mid-stream")
            body = openai.ErrorResponse(
                error=openai.ErrorInfo(message=f"generation failed: {type(exc).__name__}", type="InternalServerError", code=500)
            )
            yield f"data: {body.model_dump_json()}{separator}"

    return StreamingResponse(frames(), media_type="text/event-stream")


def _error(request: Request, status: int, message: str) -> JSONResponse:
    """An error body in the protocol the request used."""
    path = request.url.path
    if path.startswith(("/v1/", "/generate", "/health")) and not path.startswith("/v1/models/"):
        body = openai.ErrorResponse(error=openai.ErrorInfo(message=message, type=_ERROR_TYPES.get(status, "Error"), code=status))
        return JSONResponse(body.model_dump(), status_code=status)
    status_name = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 503: "UNAVAILABLE"}.get(status, "INTERNAL")
    return JSONResponse(gemini_wire.error_body(status, status_name, message), status_code=status)


_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError", 503: "ServiceUnavailableError"}


def serve(model: LocalModel | Callable[[], LocalModel], host: str, port: int, log_level: str = "info") -> None:
    """Run the stand-in server until interrupted."""
    import uvicorn

    uvicorn.run(create_app(model), host=host, port=port, log_level=log_level.lower())

