"""vLLM's prefix cache under hybridchat's context fitting: ``python -m bench.prefix_cache``.

One conversation that outgrows the context (2,048 tokens), on the real vLLM engine started with
the manifest's arguments (``bench.model_servers``), three times: with the app's policy (when the
chat no longer fits, keep its first turns, up to 35% of the budget, and leave out the oldest
turns after them in one block, down to 60%), with the app's policy before (blocks down to 70%,
no first turns kept) and leaving out only as many turns as needed. Per turn: the time to the
first token as the app sees it (fitting included) and the share of the prompt's tokens vLLM found
in its prefix cache (its ``/metrics`` counters, read before and after the turn). Prints a table;
writes ``bench/results/prefix_cache.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.model_servers import CONTEXT, ModelServer
from hybridchat.backends import GenerationParams, RetryPolicy, VllmBackend, VllmClient
from hybridchat.chat import ChatService, Conversation
from hybridchat.context import HEAD, KEEP
from hybridchat.store import open_store

RESULTS = Path(__file__).parent / "results"
# (keep, head) of hybridchat.context; the baseline, one turn at a time, last.
POLICIES = {"blocks after the first turns (the app)": (KEEP, HEAD), "blocks of 70% (the app before)": (0.7, 0.0),
            "one turn at a time": (1.0, 0.0)}
_SENTENCES = [
    "The river runs past the old mill and under the stone bridge.",
    "Every morning the baker opens her shop before sunrise.",
    "A small robot learns to paint by watching the clouds.",
    "The library keeps maps of cities that no longer exist.",
    "Two friends plan a long journey across the northern hills.",
]
_COUNTER = re.compile(r"^vllm:prefix_cache_(hits|queries)_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)


def message(turn: int) -> str:
    """About 130 tokens, different every turn."""
    body = " ".join(_SENTENCES[(turn + k) % len(_SENTENCES)] for k in range(8))
    return f"Turn {turn}. Here is a note: {body} Reply with one short sentence about it."


def counters(url: str) -> dict[str, float]:
    """vLLM's prefix-cache counters: tokens looked up, tokens found."""
    found = _COUNTER.findall(httpx.get(f"{url}/metrics", timeout=10).text)
    return {name: sum(float(value) for kind, value in found if kind == name) for name in ("hits", "queries")}


def conversation(url: str, policy: tuple[float, float], turns: int, label: str) -> list[dict]:
    store = open_store(f"sqlite:///{tempfile.mkdtemp(prefix='hybridchat-prefix-')}/history.db", resilient=False)
    keep, head = policy
    service = ChatService({"gemma": VllmBackend(VllmClient(url, retry=RetryPolicy(backoff=0.1)))}, store, keep=keep,
                          head=head)
    chat = Conversation(f"bench-{label}")
    # A persona of its own per policy: the two conversations share no cached prefix.
    params = GenerationParams(temperature=0, max_tokens=48, system_prompt=f"You are assistant '{label}'. Be brief.")
    rows = []
    for turn in range(turns):
        before, started, first = counters(url), time.perf_counter(), None
        for progress in service.respond(chat, message(turn), "gemma", params):
            if first is None and progress.reply:
                first = time.perf_counter() - started
        after, saved = counters(url), progress.turn
        assert saved is not None and saved.status in ("ok", "cut_off"), saved and saved.error
        queries = after["queries"] - before["queries"]
        rows.append({
            "turn": turn,
            "ttft_s": first,
            "prompt_tokens": saved.prompt_tokens,
            "context_start": saved.context_start,
            "hit_rate": (after["hits"] - before["hits"]) / queries if queries else None,
        })
    store.close()
    return rows


def summarise(per_turn: dict[str, list[dict]]) -> dict[str, dict]:
    """Over the turns once the chat no longer fits (the first turn either policy leaves any out)."""
    full = min(row["turn"] for rows in per_turn.values() for row in rows if row["context_start"])
    summary = {}
    for policy, rows in per_turn.items():
        after = [row for row in rows if row["turn"] >= full]
        starts = [row["context_start"] for row in rows]
        summary[policy] = {
            "turns": len(after),
            "hit_rate": statistics.mean(row["hit_rate"] for row in after),
            "ttft_p50_s": statistics.median(row["ttft_s"] for row in after),
            "ttft_mean_s": statistics.mean(row["ttft_s"] for row in after),
            "prefix_changes": sum(1 for a, b in itertools.pairwise(starts) if a != b),
        }
    return {"from_turn": full, **summary}


def run(url: str, turns: int) -> dict:
    per_turn = {name: conversation(url, policy, turns, name) for name, policy in POLICIES.items()}
    return {"context_tokens": CONTEXT, "turns": turns, "date": time.strftime("%Y-%m-%d"), "per_turn": per_turn,
            "summary": summarise(per_turn)}


def report(results: dict) -> list[tuple[str, str]]:
    """Rows of (measure, result): one per policy, then the ratio of the app's to the baseline's."""
    summary = results["summary"]
    rows = []
    for policy in POLICIES:
        s = summary[policy]
        rows.append((f"prefix cache, {policy}", f"hit rate {s['hit_rate']:.0%}, time to first token p50 "
                     f"{s['ttft_p50_s'] * 1000:.0f} ms, mean {s['ttft_mean_s'] * 1000:.0f} ms, prompt's beginning "
                     f"changed {s['prefix_changes']}×"))
    ours, before, baseline = (summary[policy]["ttft_mean_s"] for policy in POLICIES)
    rows.append(("prefix cache, time to first token", f"mean {ours / baseline:.2f}× one turn at a time's, "
                 f"{ours / before:.2f}× the app before's (turns {summary['from_turn']}–{results['turns'] - 1}, "
                 f"{results['context_tokens']:,}-token context)"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    engine = ModelServer("vllm", Path(tempfile.mkdtemp(prefix="hybridchat-vllm-")))
    engine.start()
    try:
        results = run(engine.url, args.turns)
    finally:
        engine.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prefix_cache.json").write_text(json.dumps(results, indent=2) + "\n")

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"vLLM prefix cache per turn, {CONTEXT:,}-token context: "
                  "first turn sent, share of the prompt cached, time to first token")
    for column in ("turn", *(f"{policy.split(' (')[0]}: {what}" for policy in POLICIES for what in ("start", "cached", "ms"))):
        table.add_column(column)
    for rows in zip(*results["per_turn"].values()):
        cells = [str(rows[0]["turn"])]
        for row in rows:
            hit = "" if row["hit_rate"] is None else f"{row['hit_rate']:.0%}"
            cells += [str(row["context_start"]), hit, f"{row['ttft_s'] * 1000:.0f}"]
        table.add_row(*cells)
    console = Console(width=160)
    console.print(table)
    for measure, result in report(results):
        console.print(f"{measure}: {result}")


if __name__ == "__main__":
    main()
