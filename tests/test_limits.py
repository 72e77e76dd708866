"""Fair shares that a fresh anonymous id does not reset: the turns of visitors new to the app
are shared by their client address for their first minute (hybridchat/limits.py)."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack

import httpx
import pytest
from test_reliability import visitor

from bench.queue_client import QueueClient
from bench.servers import Pace, app_server, paced_server
from hybridchat.errors import InputRefused
from hybridchat.limits import Limits

NEW_ON_YOUR_NETWORK = "from visitors new to this app on your network"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def take_turn(limits: Limits, visitor_id: str, client: str | None, anonymous: bool = True) -> None:
    with limits.turn(visitor_id, client, anonymous=anonymous):
        pass


def test_a_fresh_id_before_each_turn_does_not_lift_the_share():
    clock = Clock()
    limits = Limits(turns_per_minute=20, streams_per_client=0, newcomer_turns_per_minute=20, clock=clock)
    answered = 0
    for n in range(40):  # a script that drops its id before each turn, a second apart
        clock.now += 1
        try:
            take_turn(limits, f"fresh-{n}", "203.0.113.7")
            answered += 1
        except InputRefused as refused:
            assert NEW_ON_YOUR_NETWORK in str(refused) and "send this one in" in str(refused)
    assert answered == 20, "the same share as keeping one id"
    take_turn(limits, "someone", "198.51.100.2")  # a newcomer on another network
    take_turn(limits, "signed-in", "203.0.113.7", anonymous=False)  # a person, who cannot mint ids
    clock.now += 60
    take_turn(limits, "fresh-later", "203.0.113.7")  # a minute on, the share is there again


def test_a_visitor_who_stays_is_no_longer_new_and_keeps_their_own_share():
    clock = Clock()
    limits = Limits(turns_per_minute=20, streams_per_client=0, newcomer_turns_per_minute=3, clock=clock)
    take_turn(limits, "regular", "203.0.113.7")  # new, for their first minute
    clock.now += 30
    take_turn(limits, "regular", "203.0.113.7")
    clock.now += 31  # a minute since they came: no longer new (their turn of 31 s ago still counts)
    for n in range(2):
        take_turn(limits, f"new-{n}", "203.0.113.7")
    with pytest.raises(InputRefused, match=NEW_ON_YOUR_NETWORK):
        take_turn(limits, "new-2", "203.0.113.7")
    take_turn(limits, "regular", "203.0.113.7")  # only their own share counts now


def test_through_the_app_a_script_dropping_its_id_gets_no_more_turns_than_one_visitor(tmp_path):
    pace = Pace(ttft=0.0, tokens=4, gap=0.0)
    env = {"HYBRIDCHAT_TURNS_PER_MINUTE": "3", "HYBRIDCHAT_NEWCOMER_TURNS_PER_MINUTE": "3"}
    with ExitStack() as stack:
        vllm, _ = stack.enter_context(paced_server(pace))
        url, _ = stack.enter_context(app_server(vllm, f"sqlite:///{tmp_path}/h.db", env=env))

        async def scenario() -> tuple[list, object]:
            # The app believes X-Forwarded-For from 127.0.0.1 only: two networks here.
            async with httpx.AsyncClient(timeout=60, headers={"X-Forwarded-For": "203.0.113.66"}) as script_http, \
                    httpx.AsyncClient(timeout=60, headers={"X-Forwarded-For": "198.51.100.7"}) as other_http:
                script = QueueClient(url, script_http)
                dropped = [await script.turn(f"turn {n}", visitor(), max_tokens=4) for n in range(6)]
                other = await QueueClient(url, other_http).turn("hello", visitor(), max_tokens=4)
                return dropped, other

        dropped, other = asyncio.run(scenario())
    answered = [r for r in dropped if r.last_reply.startswith("tok0")]
    refused = [r for r in dropped if any(NEW_ON_YOUR_NETWORK in w for w in r.warnings)]
    assert (len(answered), len(refused)) == (3, 3), [r.warnings for r in dropped]
    assert refused[0].outputs[1] == "turn 3", "the refused message stays in the box"
    assert other.last_reply.startswith("tok0"), "another network's newcomers have their own share"
