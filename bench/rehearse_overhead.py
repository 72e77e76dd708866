"""What ``room rehearse`` adds to the time to first token it measures: ``python -m bench.rehearse_overhead``.

The paced stand-in answers with a known first-token time. The floor is the least a client can
do: one thread per chat, each streaming the same request with httpx and timing its first
content chunk. Then ``rehearse`` runs as many chats against the same server. The ratio of their
median times to first token is rehearse's own cost (goal: at most 1.2 times).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from bench.paced_server import MODEL
from bench.servers import Pace, paced_server
from hybridchat.rehearse import percentile, rehearse

PACE = Pace(ttft=0.2, tokens=30, gap=0.01)
GOAL = 1.2


def floor(url: str, chats: int, turns: int) -> list[float]:
    """Each chat's times to first token, streamed by the plainest client."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True,
            "max_tokens": PACE.tokens}

    def chat(_: int) -> list[float]:
        measured = []
        with httpx.Client(timeout=60) as http:
            for _turn in range(turns):
                started = time.monotonic()
                with http.stream("POST", f"{url}/v1/chat/completions", json=body) as answer:
                    first = None
                    for line in answer.iter_lines():
                        if first is None and _has_text(line):
                            first = time.monotonic() - started
                measured.append(first if first is not None else float("nan"))
        return measured

    with ThreadPoolExecutor(max_workers=chats) as pool:
        return sorted(t for times in pool.map(chat, range(chats)) for t in times)


def _has_text(line: str) -> bool:
    """Whether an SSE line is a chunk with reply text (what the app counts as the first token)."""
    if not line.startswith("data: {"):
        return False
    choices = json.loads(line[len("data: "):]).get("choices") or [{}]
    return bool((choices[0].get("delta") or {}).get("content"))


def run(chats: int = 30, turns: int = 3) -> dict:
    with paced_server(PACE) as (url, _):
        floor(url, 2, 1)  # warm both paths up
        rehearse(url, None, chats=2, turns=1, think_s=0, max_tokens=PACE.tokens)
        bare = floor(url, chats, turns)
        rehearsed = rehearse(url, None, chats=chats, turns=turns, think_s=0, max_tokens=PACE.tokens)
    ours = rehearsed.first_tokens()
    return {"chats": chats, "turns": turns, "pace_ttft_s": PACE.ttft,
            "floor_ttft_s": {"p50": statistics.median(bare), "p95": percentile(bare, 95)},
            "rehearse_ttft_s": {"p50": statistics.median(ours), "p95": percentile(ours, 95)},
            "errors": dict(rehearsed.errors()), "ratio": statistics.median(ours) / statistics.median(bare)}


def report(measured: dict) -> list[tuple[str, str, str, str]]:
    floor_, ours = measured["floor_ttft_s"], measured["rehearse_ttft_s"]
    return [(f"room rehearse, {measured['chats']} chats: time to first token",
             f"p50 {ours['p50'] * 1000:.0f} ms (floor {floor_['p50'] * 1000:.0f} ms), p95 {ours['p95'] * 1000:.0f} ms "
             f"(floor {floor_['p95'] * 1000:.0f} ms): {measured['ratio']:.2f}× the floor",
             f"≤ {GOAL}× the floor", "yes" if measured["ratio"] <= GOAL and not measured["errors"] else "no")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=30)
    parser.add_argument("--turns", type=int, default=3)
    args = parser.parse_args()
    measured = run(args.chats, args.turns)
    for row in report(measured):
        print(" | ".join(row))
    print(json.dumps(measured, indent=1))


if __name__ == "__main__":
    main()
