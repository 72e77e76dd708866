"""The stand-in's replies in each protocol's wire format: vLLM's streamed chat and completion
chunks (OpenAI's), Gemini's responses and chunks, and the server-sent events around them."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi.responses import StreamingResponse
from google.genai import types

from hybridchat.backends.base import ReplyStream
from hybridchat.protocols import gemini as gemini_wire
from hybridchat.protocols import openai as openai_wire

log = logging.getLogger("hybridchat.serve_local")


def usage_of(reply: ReplyStream) -> openai_wire.Usage | None:
    if reply.usage is None:
        return None
    prompt, completion = reply.usage.prompt_tokens, reply.usage.completion_tokens
    return openai_wire.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def openai_answer(
    reply: ReplyStream, served: str, body: openai_wire.ChatCompletionRequest | openai_wire.CompletionRequest
) -> Any:
    """The answer to ``/v1/chat/completions`` or ``/v1/completions``, as ``body`` asked: server-sent
    chunks, or one whole completion."""
    chat = isinstance(body, openai_wire.ChatCompletionRequest)
    ident, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        chunks = chat_chunks if chat else completion_chunks
        with_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse(chunks(reply, ident, created, served, with_usage))
    text, usage = "".join(reply), usage_of(reply)
    if chat:
        message = openai_wire.AssistantMessage(content=text)
        choice = openai_wire.ChatChoice(message=message, finish_reason=reply.finish_reason)
        return openai_wire.ChatCompletion(id=ident, created=created, model=served, choices=[choice], usage=usage)
    choices = [openai_wire.CompletionChoice(text=text, finish_reason=reply.finish_reason)]
    return openai_wire.Completion(id=ident, created=created, model=served, choices=choices, usage=usage)


def chat_chunks(reply: ReplyStream, ident: str, created: int, name: str, include_usage: bool) -> Iterator[str]:
    def chunk(delta: openai_wire.Delta, finish: str | None = None) -> str:
        choice = openai_wire.ChatChunkChoice(delta=delta, finish_reason=finish)
        body = openai_wire.ChatCompletionChunk(id=ident, created=created, model=name, choices=[choice])
        return body.model_dump_json()

    yield chunk(openai_wire.Delta(role="assistant", content=""))
    for piece in reply:
        yield chunk(openai_wire.Delta(content=piece))
    yield chunk(openai_wire.Delta(), finish=reply.finish_reason)
    if include_usage:
        last = openai_wire.ChatCompletionChunk(id=ident, created=created, model=name, choices=[], usage=usage_of(reply))
        yield last.model_dump_json()
    yield "[DONE]"


def completion_chunks(reply: ReplyStream, ident: str, created: int, name: str, include_usage: bool) -> Iterator[str]:
    def chunk(text: str, finish: str | None = None, usage: openai_wire.Usage | None = None) -> str:
        choices = [] if usage else [openai_wire.CompletionChoice(text=text, finish_reason=finish)]
        body = openai_wire.Completion(id=ident, created=created, model=name, choices=choices, usage=usage)
        return body.model_dump_json()

    for piece in reply:
        yield chunk(piece)
    yield chunk("", finish=reply.finish_reason)
    if include_usage:
        yield chunk("", usage=usage_of(reply))
    yield "[DONE]"


def gemini_chunks(reply: ReplyStream, version: str) -> Iterator[str]:
    for piece in reply:
        yield gemini_wire.dump(gemini_response(piece, None, version))
    yield gemini_wire.dump(gemini_response("", reply, version))


def gemini_response(text: str, finished: ReplyStream | None, version: str) -> types.GenerateContentResponse:
    """A response or chunk; ``finished``: the exhausted reply, for its finish reason and usage."""
    usage, finish = None, None
    if finished is not None:
        finish = types.FinishReason.MAX_TOKENS if finished.finish_reason == "length" else types.FinishReason.STOP
        counted = usage_of(finished)
        if counted is not None:
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


def sse(events: Iterator[str], separator: str = "\n\n") -> StreamingResponse:
    def frames() -> Iterator[str]:
        try:
            for event in events:
                yield f"data: {event}{separator}"
        except Exception as exc:  # headers are sent: report in-band, as vLLM does
            log.exception("generation failed mid-stream")
            body = openai_wire.ErrorResponse(
                error=openai_wire.ErrorInfo(
                    message=f"generation failed: {type(exc).__name__}", type="InternalServerError", code=500
                )
            )
            yield f"data: {body.model_dump_json()}{separator}"

    return StreamingResponse(frames(), media_type="text/event-stream")
