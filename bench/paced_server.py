"""A vLLM stand-in whose cost is known exactly: the first token after ``ttft`` seconds, then one
token every ``gap`` seconds, ``tokens`` in all (fewer if the request's ``max_tokens`` says so).
Speaks vLLM's OpenAI-compatible chat API, streamed or in one answer, and Gemini's streamed
``streamGenerateContent`` (the Gemini API's path, which google-genai takes with an API key), so
that a side-by-side turn has two models paced alike.

    python -m bench.paced_server --port 8100 --ttft 0.2 --tokens 50 --gap 0.02
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

MODEL = "paced/gemma-stand-in"


def create_app(ttft: float, tokens: int, gap: float) -> FastAPI:
    app = FastAPI()
    streams = {"now": 0, "most": 0}  # replies being streamed; the most at once tells the app's concurrency

    @app.get("/streams")
    async def stream_counts() -> JSONResponse:
        return JSONResponse(streams)

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}]})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        count = min(tokens, body.get("max_tokens") or tokens)
        if not body.get("stream"):  # one blocking answer, after as long as the stream would take
            await asyncio.sleep(ttft + (count - 1) * gap)
            return JSONResponse({
                "id": "b", "object": "chat.completion", "created": 0, "model": MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(f"tok{i} " for i in range(count))},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": count, "total_tokens": count + 1},
            })

        def chunk(index: int, last: bool) -> dict:
            # The last token carries the finish reason, as vLLM's does. The answer is as long as
            # asked for: it ends of itself ("stop"), never at the limit.
            return {"id": "b", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                    "choices": [{"index": 0, "delta": {"content": f"tok{index} "},
                                 "finish_reason": "stop" if last else None}]}

        usage = {"id": "b", "object": "chat.completion.chunk", "created": 0, "model": MODEL, "choices": [],
                 "usage": {"prompt_tokens": 1, "completion_tokens": count, "total_tokens": count + 1}}
        return StreamingResponse(paced(count, chunk, usage), media_type="text/event-stream")

    @app.post("/{version}/models/{target}")
    async def gemini(target: str, request: Request) -> Response:
        body = await request.json()
        asked = (body.get("generationConfig") or {}).get("maxOutputTokens") or tokens
        count = min(tokens, asked)

        def chunk(index: int, last: bool) -> dict:
            part = {"content": {"role": "model", "parts": [{"text": f"tok{index} "}]}}
            return {"candidates": [part | ({"finishReason": "STOP"} if last else {})],
                    **({"usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": count,
                                          "totalTokenCount": count + 1}} if last else {})}

        if not target.endswith(":streamGenerateContent"):
            return JSONResponse({"error": {"code": 404, "message": "streamed only", "status": "NOT_FOUND"}}, 404)
        return StreamingResponse(paced(count, chunk, None), media_type="text/event-stream")

    async def paced(count: int, chunk, last: dict | None):
        """``count`` chunks on the schedule, then ``last`` (and vLLM's end) where given."""
        started = time.perf_counter()
        streams["now"] += 1
        streams["most"] = max(streams["most"], streams["now"])
        try:
            for index in range(count):
                # Sleep to an absolute schedule, so delays do not drift with event-loop load.
                due = started + ttft + index * gap
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                yield f"data: {json.dumps(chunk(index, index == count - 1))}\n\n"
        finally:
            streams["now"] -= 1
        if last is not None:
            yield f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n"

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ttft", type=float, default=0.2, help="seconds to the first token")
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between tokens")
    args = parser.parse_args()
    uvicorn.run(create_app(args.ttft, args.tokens, args.gap), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
