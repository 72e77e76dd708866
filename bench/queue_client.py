"""The app's ``chat`` event through Gradio's queue API (join, then the SSE stream), as a browser
calls it: the benchmark's driver and the reliability tests' client.

Unlike ``gradio_client`` it reports what a visitor sees besides the outputs: the time to the
first update and the warnings (``gr.Warning``) shown on the way.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from gradio_client.utils import apply_diff

_MODEL_LINE = re.compile(r"<sub>(.*?)</sub>\n\n")
_FIGURES_LINE = re.compile(r"\n\n<sub>([^<]*)</sub>$")  # chat_view.figures, under the reply


@dataclass
class Reply:
    """How one turn went: ``outputs`` are the event's final outputs (chat, message box,
    conversation, browser state, sidebar), ``warnings`` what the visitor was told."""

    first_s: float = float("nan")
    total_s: float = float("nan")
    ok: bool = False
    outputs: list[Any] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.outputs[0] if self.outputs else []

    @property
    def browser(self) -> dict[str, Any] | None:
        """The browser state the app sends back (``None`` from the floor, which keeps none)."""
        return self.outputs[3] if len(self.outputs) > 3 else None

    @property
    def last_reply(self) -> str:
        """The last reply's text, without the line naming its model (``last_model``)."""
        return model_and_text(self.messages[-1])[1] if self.messages else ""

    @property
    def last_model(self) -> str | None:
        return model_and_text(self.messages[-1])[0] if self.messages else None


def text_of(message: dict[str, Any]) -> str:
    """A chat message's text, whether its content is a string or a list of text blocks."""
    content = message["content"]
    return content if isinstance(content, str) else "".join(block.get("text", "") for block in content)


def model_and_text(message: dict[str, Any]) -> tuple[str | None, str]:
    """A reply's model, as the line the app puts over it names it (``chat_view.model_line``), and
    its text without the figures line under it; ``None`` for a message without the model's line."""
    text = text_of(message)
    found = _MODEL_LINE.match(text)
    if not found:
        return None, text
    return found.group(1), _FIGURES_LINE.sub("", text[found.end():])


def figures_of(message: dict[str, Any]) -> str | None:
    """The figures line under a reply (``chat_view.figures``), if it has one."""
    found = _FIGURES_LINE.search(text_of(message))
    return found.group(1) if found else None


class QueueClient:
    def __init__(self, base: str, http: httpx.AsyncClient, fn_index: dict[str, int] | None = None):
        """``fn_index``: the events' ids, where another client has read them from ``/config``."""
        self.base, self.http = base, http
        if fn_index is None:
            # With the client's headers and cookies: behind sign-in, /config is refused without them.
            config = httpx.get(f"{base}/config", headers=http.headers, cookies=http.cookies).raise_for_status().json()
            fn_index = {d["api_name"]: d["id"] for d in config["dependencies"]}
        self.fn_index = fn_index

    async def turn(
        self,
        message: str,
        browser: dict[str, Any],
        *,
        model: str = "gemma",
        max_tokens: int = 64,
        temperature: float = 0.5,
        session_hash: str | None = None,
        on_update: Callable[[list[Any]], None] | None = None,
    ) -> Reply:
        """Send ``message``; ``session_hash`` is one browser tab (a new one by default), and
        ``on_update`` sees the outputs at each streamed update."""
        data = [message, None, model, temperature, 0.9, max_tokens, "", browser, None, None]
        return await self.call("chat", data, session_hash=session_hash, on_update=on_update)

    async def call(
        self,
        api_name: str,
        data: list[Any],
        *,
        session_hash: str | None = None,
        on_update: Callable[[list[Any]], None] | None = None,
    ) -> Reply:
        """Any of the app's events, the private ones too, as the page calls them (``None`` for
        a ``gr.State`` input: the server holds it, per ``session_hash``)."""
        session_hash = session_hash or uuid.uuid4().hex[:12]
        reply, outputs = Reply(), None
        started = time.perf_counter()
        # json.dumps, not httpx's json=: it writes NaN as a hostile client may.
        joined = await self.http.post(f"{self.base}/gradio_api/queue/join", headers={"content-type": "application/json"},
                                      content=json.dumps({"data": data, "fn_index": self.fn_index[api_name],
                                                          "session_hash": session_hash, "event_data": None,
                                                          "trigger_id": None}))
        joined.raise_for_status()
        async with self.http.stream("GET", f"{self.base}/gradio_api/queue/data", params={"session_hash": session_hash}) as sse:
            async for line in sse.aiter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if event["msg"] == "log" and event.get("level") == "warning":
                    reply.warnings.append(event["log"])
                elif event["msg"] == "process_generating":
                    if reply.first_s != reply.first_s:  # still NaN: this is the first update
                        reply.first_s = time.perf_counter() - started
                    data = event["output"]["data"]
                    outputs = data if outputs is None else [apply_diff(old, diff) for old, diff in zip(outputs, data)]
                    if on_update is not None:
                        on_update(outputs)
                elif event["msg"] == "process_completed":
                    reply.total_s = time.perf_counter() - started
                    reply.ok = bool(event.get("success"))
                    reply.outputs = event["output"].get("data", [])
                    if reply.first_s != reply.first_s:
                        reply.first_s = reply.total_s
                    return reply
        reply.total_s = time.perf_counter() - started
        return reply
