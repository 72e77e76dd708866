"""A hostile visitor of the deployed app: each attack driven for real over HTTP against the
running app (Gradio's queue API as the page calls it, the private events too), and in Chromium
where the browser is what is attacked. README's Reliability table has a row for each."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from bench.queue_client import QueueClient
from bench.run import Pace, app_server, paced_server
from hybridchat.store import open_store


def visitor() -> dict[str, Any]:
    return {"visitor": None, "session": None}


def test_deleting_a_chat_while_its_reply_streams_breaks_nobody_elses(tmp_path):
    store_url = f"sqlite:///{tmp_path}/history.db"
    log = tmp_path / "app.log"
    with paced_server(Pace(ttft=0.0, tokens=400, gap=0.01)) as (vllm, _), log.open("wb") as sink:
        with app_server(vllm, store_url, env={"HYBRIDCHAT_LOG_LEVEL": "INFO"}, output=sink) as (url, _):

            async def scenario():
                async with httpx.AsyncClient(timeout=60) as http:
                    client = QueueClient(url, http)
                    bob = await client.turn("Bob's own chat", visitor(), max_tokens=4)
                    tab = uuid.uuid4().hex[:12]
                    first = await client.turn("first", visitor(), max_tokens=4, session_hash=tab)
                    streaming_now = asyncio.Event()
                    late = asyncio.create_task(client.turn(
                        "tell me more", first.browser, max_tokens=300, session_hash=tab,
                        on_update=lambda _: streaming_now.set(),
                    ))
                    await asyncio.wait_for(streaming_now.wait(), 30)
                    # "Delete this chat" in a second tab of the same chat: nothing stops the reply.
                    other_tab = uuid.uuid4().hex[:12]
                    chat_id = first.browser["session"]
                    await client.call("start", [first.browser], session_hash=other_tab)  # the page loads
                    await client.call("open_session", [chat_id, first.browser], session_hash=other_tab)
                    await client.call("delete_chat", [None, first.browser], session_hash=other_tab)
                    late_reply = await late
                    again = await client.turn("Bob again", bob.browser, max_tokens=4)
                    return first, late_reply, again

            first, late, bob_again = asyncio.run(scenario())
    deleted = first.browser["session"]
    assert any("deleted while the reply was on its way" in w for w in late.warnings), late.warnings
    assert not any("Not saved yet" in w for w in late.warnings), "the deleter is not promised a save"
    assert late.browser["session"] is None and late.messages == [], "the deleted chat is not shown again"
    sidebar = [choice[1] for choice in bob_again.outputs[4]["choices"]]
    assert sidebar == [bob_again.browser["session"]], "another visitor's sidebar still lists his chat"
    store = open_store(store_url, resilient=False)
    assert deleted not in [s.session_id for s in store.list_sessions(None)], "the deleted chat stays deleted"
    logged = log.read_text()
    assert "Application shutdown failed" not in logged and "Traceback" not in logged, logged[-2000:]
