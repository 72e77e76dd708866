"""A server that speaks the vLLM and Gemini wire formats and misbehaves on command.

Modes: ``ok``, ``loading`` (503), ``server_error`` (500), ``bad_request`` (400), ``quota``
(429), ``slow`` (answers after ``delay`` s), ``malformed`` (not JSON), ``truncated`` (SSE
that stops early, with no finish reason), ``lean`` (chunks with only their ``choices``), ``flaky`` (503 for the first ``failures`` generation requests, then ok); Gemini only:
``safety_prompt``, ``safety_reply``, ``empty``, ``max_tokens``; vLLM chat only: ``html`` (a
hostile reply: ``hostile``), ``engine_dead`` and ``abort`` (a stream broken off as vLLM breaks it off when
stopped), ``thinking`` (``THOUGHT`` first, in the ``reasoning`` field vLLM's reasoning parser fills;
a raw completion: in its thought channel; ``thinking_cut``: the token limit reached while thinking).
``requests`` counts what came, ``bodies`` the chat and completion requests' bodies (``headers``
their headers); ``/metrics``
has vLLM's queue gauges, with ``waiting`` requests waiting.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from hybridchat.vllm_metrics import Exported

REPLY = "fault server says hi"
THOUGHT = "The visitor greets me. <img src=x onerror=alert(1)> I should greet back."
ENGINE_DEAD = {"error": {"message": "EngineCore encountered an issue. See stack trace (above) for the root cause.",
                         "type": "InternalServerError", "param": None, "code": 500}}
# A reply that would run script if the chat rendered model output as live HTML.
HOSTILE_REPLY = (
    '**bold** <img src=x onerror="window.__xss=1;alert(1)"> '
    '<script>window.__xss=2;alert(2)</script> <a href="javascript:alert(3)">link</a>'
)


@dataclass
class FaultServer:
    url: str = ""
    mode: str = "ok"
    delay: float = 0.0
    failures: int = 0
    waiting: int = 0
    hostile: str = HOSTILE_REPLY
    requests: list[str] = field(default_factory=list)
    bodies: list[dict] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def reset(self) -> None:
        self.mode, self.delay, self.failures, self.waiting, self.hostile = "ok", 0.0, 0, 0, HOSTILE_REPLY
        self.requests.clear()
        self.bodies.clear()
        self.headers.clear()

    def posts(self) -> int:
        return sum(1 for r in self.requests if r.startswith("POST"))


def _openai_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "Error", "code": status}}, status_code=status)


def _google_error(status: int, name: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": status, "message": message, "status": name}}, status_code=status)


def _candidate(text: str | None, finish: str | None) -> dict:
    candidate: dict = {"index": 0}
    if text is not None:
        candidate["content"] = {"role": "model", "parts": [{"text": text}]}
    if finish:
        candidate["finishReason"] = finish
    return candidate


def create_fault_app(control: FaultServer) -> FastAPI:
    app = FastAPI()

    def status_fault(gemini: bool, generating: bool = False) -> Response | None:
        """The error answer the current mode calls for, if it is an error status."""
        mode = control.mode
        if mode == "flaky":
            if control.failures > 0 and generating:
                control.failures -= 1
                mode = "loading"
            else:
                return None
        error = _google_error if gemini else (lambda status, _name, message: _openai_error(status, message))
        return {
            "loading": lambda: error(503, "UNAVAILABLE", "model is loading"),
            "server_error": lambda: error(500, "INTERNAL", "internal error"),
            "bad_request": lambda: error(400, "INVALID_ARGUMENT", "max_tokens is too large for this model"),
            "quota": lambda: error(429, "RESOURCE_EXHAUSTED", "quota exceeded"),
        }.get(mode, lambda: None)()

    @app.middleware("http")
    async def count(request: Request, call_next):  # type: ignore[no-untyped-def]
        control.requests.append(f"{request.method} {request.url.path}")
        if control.mode == "slow":
            time.sleep(control.delay)  # blocks this server on purpose: it is "hung"
        return await call_next(request)

    @app.get("/health")
    def health() -> Response:
        return status_fault(False) or Response(status_code=200)

    @app.get("/metrics")
    def metrics() -> Response:
        load = Exported("google/gemma-3-12b-it")
        load.waiting = control.waiting
        return status_fault(False) or Response(load.text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    def models() -> Response:
        return status_fault(False) or JSONResponse(
            {"object": "list", "data": [{"id": "google/gemma-3-12b-it", "object": "model", "created": 0, "owned_by": "vllm"}]}
        )

    def sse(frames: list[str], separator: str = "\n\n") -> StreamingResponse:
        return StreamingResponse((f"data: {frame}{separator}" for frame in frames), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        control.bodies.append(body)
        control.headers.append(dict(request.headers))
        if fault := status_fault(False, generating=True):
            return fault
        text = control.hostile if control.mode == "html" else "" if control.mode == "thinking_cut" else REPLY
        thought = {"reasoning": THOUGHT} if control.mode.startswith("thinking") else {}
        ending = "length" if control.mode == "thinking_cut" else "stop"
        if body.get("stream") is not True:  # one answer, as vLLM gives without "stream"
            message = {"role": "assistant", "content": text or None, **thought}
            return JSONResponse({"id": "c", "object": "chat.completion", "created": 0, "model": body.get("model", "m"),
                                 "choices": [{"index": 0, "message": message, "finish_reason": ending}],
                                 "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": body.get("model", "m"),
                 "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        if thought:  # vLLM streams the reasoning first, in deltas of their own
            halves = (THOUGHT[:20], THOUGHT[20:])
            thinking = [{**chunk, "choices": [{"index": 0, "delta": {"reasoning": half}, "finish_reason": None}]}
                        for half in halves]
            finished = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": ending}]}
            return sse([*map(json.dumps, [*thinking, *([chunk] if text else []), finished]), "[DONE]"])
        if control.mode == "malformed":
            return sse(["{not json"])
        if control.mode == "truncated":
            return sse([json.dumps(chunk)])
        if control.mode == "engine_dead":  # vLLM 0.32's stream when its engine process is killed
            return sse([json.dumps(chunk), json.dumps(ENGINE_DEAD), "[DONE]"])
        finished = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        if control.mode == "abort":  # vLLM 0.32's stream when its API server is stopped (SIGTERM)
            finished["choices"][0]["finish_reason"] = "abort"
        if control.mode == "lean":  # what other OpenAI-compatible servers send: no id, created, model
            chunk, finished = ({"choices": frame["choices"]} for frame in (chunk, finished))
        return sse([json.dumps(chunk), json.dumps(finished), "[DONE]"])

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await request.json()
        control.bodies.append(body)
        if fault := status_fault(False, generating=True):
            return fault
        if control.mode == "malformed":
            return Response("{not json", media_type="application/json")
        # Thinking, as vLLM writes a Gemma 4 completion asked to keep its special tokens.
        text = f"<|channel>thought\n{THOUGHT}<channel|>{REPLY}" if control.mode == "thinking" else REPLY
        return JSONResponse({"id": "c", "object": "text_completion", "created": 0, "model": "m",
                             "choices": [{"index": 0, "text": text, "finish_reason": "stop"}]})

    @app.post("/generate")
    async def generate(request: Request) -> Response:
        body = await request.json()
        if fault := status_fault(False, generating=True):
            return fault
        if control.mode == "malformed":
            return JSONResponse({"outputs": []})
        return JSONResponse({"predictions": [f"Prompt:\n{body['prompt']}\nOutput:\n{REPLY}"]})

    @app.get("/{version}/models/{model}")
    @app.get("/{version}/publishers/google/models/{model}")
    @app.get("/{version}/projects/{project}/locations/{location}/publishers/google/models/{model}")
    def gemini_model(model: str) -> Response:
        return status_fault(True) or JSONResponse({"name": f"models/{model}"})

    @app.post("/{version}/models/{target}")
    @app.post("/{version}/projects/{project}/locations/{location}/publishers/google/models/{target}")
    async def gemini_generate(target: str, request: Request) -> Response:
        await request.json()
        if fault := status_fault(True, generating=True):
            return fault
        mode = control.mode
        body = {
            "safety_prompt": {"promptFeedback": {"blockReason": "SAFETY"}},
            "safety_reply": {"candidates": [_candidate(None, "SAFETY")]},
            "empty": {"candidates": []},
            "max_tokens": {"candidates": [_candidate(None, "MAX_TOKENS")]},
        }.get(mode, {"candidates": [_candidate(REPLY, "STOP")], "modelVersion": "fault",
                   "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4, "totalTokenCount": 7}})
        if target.endswith(":streamGenerateContent"):
            if mode == "malformed":
                return sse(["{not json"], "\r\n\r\n")
            return sse([json.dumps(body)], "\r\n\r\n")
        if mode == "malformed":
            return Response("{not json", media_type="application/json")
        return JSONResponse(body)

    return app
