"""The prefix cache with two Gemma replicas: ``python -m bench.replicas``.

Two real vLLM engines (the room manifest's arguments, ``bench.model_servers``) behind Debian's
HAProxy, routed two ways: round-robin, and by conversation (a consistent hash on the header the
app sends Gemma's server, ``CONVERSATION_HEADER``; on GKE the Inference Gateway routes by prefix
instead, deploy/room-gemma-pool.yaml). Each way, 8 chats of 10 turns at once through the app's
``ChatService``; their personas differ by routing, so no prompt of one is cached for the other.
Each replica's ``/metrics`` counters, read before and after, give the share of prompt tokens found
in its prefix cache; the time to first token is the app's. Prints the rows; writes
``bench/results/replicas.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.balancer import ROUTINGS, model_haproxy
from bench.model_servers import ROOT, ModelServer
from bench.prefix_cache import message
from hybridchat import vllm_metrics
from hybridchat.backends import GenerationParams, RetryPolicy, VllmBackend, VllmClient
from hybridchat.chat import ChatService, Conversation
from hybridchat.store import open_store

RESULTS = Path(__file__).parent / "results"
ROOM = ROOT / "deploy" / "gemma3-12b-room.yaml"


def chats(url: str, routing: str, count: int, turns: int, ask: Callable[[int], str]) -> list[float]:
    """``count`` chats of ``turns`` turns at once through ``url``; each turn's time to first token."""
    store = open_store(f"sqlite:///{tempfile.mkdtemp(prefix='hybridchat-replicas-')}/history.db", resilient=False)
    service = ChatService({"gemma": VllmBackend(VllmClient(url, retry=RetryPolicy(backoff=0.1)))}, store)

    def chat(number: int) -> list[float]:
        conversation = Conversation(f"bench-{routing}-{number}")
        params = GenerationParams(temperature=0, max_tokens=32,
                                  system_prompt=f"You are assistant {number} of the {routing} room. Be brief.")
        firsts = []
        for turn in range(turns):
            started, first = time.perf_counter(), None
            for progress in service.respond(conversation, ask(turn + number), "gemma", params):
                if first is None and progress.reply:
                    first = time.perf_counter() - started
            assert progress.turn is not None and progress.turn.status in ("ok", "cut_off"), progress.turn
            firsts.append(first or time.perf_counter() - started)
        return firsts

    with ThreadPoolExecutor(count) as pool:
        firsts = [ttft for result in pool.map(chat, range(count)) for ttft in result]
    store.close()
    return firsts


def run(replicas: list[str], count: int = 8, turns: int = 10, ask: Callable[[int], str] = message) -> dict:
    """Each routing over the same replicas, one after the other; ``ask(n)``: the message of turn n."""
    measured = {}
    for routing in ROUTINGS:
        before = [vllm_metrics.read(url) for url in replicas]
        with model_haproxy(replicas, routing) as url:
            firsts = chats(url, routing, count, turns, ask)
        after = [vllm_metrics.read(url) for url in replicas]
        assert all(before) and all(after), "each replica serves vLLM's /metrics"
        hits = sum(a.prefix_hits - b.prefix_hits for a, b in zip(after, before, strict=True))  # type: ignore[union-attr]
        queries = sum(a.prefix_queries - b.prefix_queries for a, b in zip(after, before, strict=True))  # type: ignore[union-attr]
        measured[routing] = {"hit_rate": hits / queries if queries else None,
                             "ttft_p50_s": statistics.median(firsts), "turns": len(firsts)}
    return {"chats": count, "turns": turns, "date": time.strftime("%Y-%m-%d"), "routings": measured}


def report(results: dict) -> list[tuple[str, str]]:
    """Rows of (measure, result): each routing, then what routing by conversation buys."""
    routings = results["routings"]
    rows = [(f"prefix cache, two replicas, {routing}",
             f"hit rate {_share(measured['hit_rate'])}, time to first token p50 {measured['ttft_p50_s'] * 1000:.0f} ms "
             f"({results['chats']} chats × {results['turns']} turns at once)") for routing, measured in routings.items()]
    ours, baseline = routings["by conversation"]["ttft_p50_s"], routings["round-robin"]["ttft_p50_s"]
    rows.append(("prefix cache, two replicas, time to first token", f"{ours / baseline:.2f}× round-robin's"))
    return rows


def _share(rate: float | None) -> str:
    return "none looked up" if rate is None else f"{rate:.0%}"


def on_two(kind: str, scratch: Path, count: int, turns: int) -> dict:
    """``run`` on two servers of ``kind`` (``"vllm"``, or ``"stand-in"`` for a quick run) started here."""
    engines = [ModelServer(kind, scratch / f"replica-{n}", manifest=ROOM) for n in range(2)]
    try:
        for engine in engines:
            engine.log.parent.mkdir(parents=True, exist_ok=True)
            engine.start()
        return run([engine.url for engine in engines], count, turns)
    finally:
        for engine in engines:
            engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=8)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = on_two("vllm", Path(tempfile.mkdtemp(prefix="hybridchat-replicas-")), args.chats, args.turns)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "replicas.json").write_text(json.dumps(results, indent=2) + "\n")
    for measure, result in report(results):
        print(f"{measure}: {result}")


if __name__ == "__main__":
    main()
