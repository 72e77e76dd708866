"""What hybridchat adds on top of the model: ``python -m bench.run`` (``make bench``).

The app runs as its own process against a paced token server (``bench.paced_server``) whose
cost is known exactly; this process drives the app through Gradio's queue HTTP/SSE API, so the
app's cost is the measured time minus the backend's. Last, the real vLLM engine's prefix cache
under the app's context fitting (``bench.prefix_cache``). Prints a table and writes
``bench/results/*.json``. ``--quick`` runs a tiny version without vLLM (the smoke test uses it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from bench import prefix_cache
from bench.model_servers import ModelServer
from bench.queue_client import QueueClient, Reply
from hybridchat import history
from hybridchat.lab.local import free_port, stop_process
from hybridchat.store import Turn, open_store
from hybridchat.visitors import VisitorIds

RESULTS = Path(__file__).parent / "results"
# The app signs visitor ids; the driver knows its key so it can open the 200-turn session it seeded.
BENCH_SECRET = "benchmark-only-session-secret"
LONG_VISITOR = "bench-long"


@dataclass(frozen=True)
class Pace:
    """The paced server's timing: first token after ``ttft``, then one every ``gap``."""

    ttft: float
    tokens: int
    gap: float

    @property
    def total(self) -> float:
        return self.ttft + (self.tokens - 1) * self.gap


LATENCY_PACE = Pace(ttft=0.05, tokens=20, gap=0.005)
LOAD_PACE = Pace(ttft=0.2, tokens=50, gap=0.02)


@contextmanager
def serving(
    argv: list[str], url: str, env: dict[str, str] | None = None, output: IO[bytes] | None = None
) -> Iterator[subprocess.Popen]:
    """A server process, ready once ``url`` answers 200; stopped on exit. Its output goes to
    ``output`` (discarded by default)."""
    sink = output or subprocess.DEVNULL
    process = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=sink, stderr=subprocess.STDOUT if output else sink)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv} did not start")
            time.sleep(0.1)
        yield process
    finally:
        stop_process(process, timeout=15)


@contextmanager
def paced_server(pace: Pace, port: int | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """(its URL, its process)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "bench.paced_server", "--port", str(port), "--ttft", str(pace.ttft),
            "--tokens", str(pace.tokens), "--gap", str(pace.gap)]
    with serving(argv, f"{url}/health") as process:
        yield url, process


@contextmanager
def app_server(
    vllm_url: str,
    store_url: str,
    *,
    concurrency: int = 64,
    stream: bool = True,
    env: dict[str, str] | None = None,
    output: IO[bytes] | None = None,
) -> Iterator[tuple[str, int]]:
    """The app as its own process on Gemma at ``vllm_url``: (its URL, its pid); ``env`` adds
    settings, ``output`` takes its log."""
    port = free_port()
    env = {
        "HYBRIDCHAT_MODE": "local", "HYBRIDCHAT_BACKENDS": "gemma", "HYBRIDCHAT_VLLM_URL": vllm_url,
        "HYBRIDCHAT_GEMMA_MODEL": "paced/gemma-stand-in", "HYBRIDCHAT_STORE_URL": store_url,
        "HYBRIDCHAT_CONCURRENCY": str(concurrency), "HYBRIDCHAT_STREAM": str(stream).lower(),
        "HYBRIDCHAT_LOG_LEVEL": "WARNING", "HYBRIDCHAT_SESSION_SECRET": BENCH_SECRET,
        # Every simulated visitor comes from 127.0.0.1, as fast as it can: no fair-share limits.
        "HYBRIDCHAT_TURNS_PER_MINUTE": "0", "HYBRIDCHAT_STREAMS_PER_CLIENT": "0", **(env or {}),
    }
    argv = [sys.executable, "-m", "hybridchat.cli", "app", "--port", str(port)]
    with serving(argv, f"http://127.0.0.1:{port}/healthz", env, output) as process:
        yield f"http://127.0.0.1:{port}", process.pid


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(values), "p95": percentile(values, 0.95), "n": len(values)}


def seed_long_session(store_url: str, turns: int) -> str:
    store = open_store(store_url, resilient=False)
    session = store.create_session(f"visitor:{LONG_VISITOR}")
    for n in range(turns):
        store.append(session, Turn(user=f"question {n} " * 5, model="gemma", reply=f"answer {n} " * 20))
    store.close()
    return session


async def overhead(base: str, pace: Pace, turns: int, long_session: str) -> dict:
    results = {}
    async with httpx.AsyncClient(timeout=60) as http:
        client = QueueClient(base, http)
        await client.turn("warm up", {"visitor": None, "session": None})
        long_owner = VisitorIds(BENCH_SECRET.encode()).token_for(LONG_VISITOR)
        for name, browser_of in (
            ("short history", lambda n: {"visitor": None, "session": None}),  # a new visitor each
            ("200-turn history", lambda n: {"visitor": long_owner, "session": long_session}),
        ):
            firsts, totals = [], []
            for n in range(turns):
                reply = await client.turn(f"message {n}", browser_of(n))
                assert reply.ok, f"turn {n} failed"
                firsts.append((reply.first_s - pace.ttft) * 1000)
                totals.append((reply.total_s - pace.total) * 1000)
            results[name] = {"overhead_ms": summary(totals), "ttft_added_ms": summary(firsts)}
    return results


async def concurrency(base: str, pace: Pace, levels: list[int], turns_each: int) -> dict:
    results = {}
    limits = httpx.Limits(max_connections=4 * max(levels), max_keepalive_connections=4 * max(levels))
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        client = QueueClient(base, http)
        for level in levels:
            latencies: list[float] = []
            errors = 0

            async def visitor(index: int) -> None:
                nonlocal errors
                # One browser tab each, going on with its chat.
                browser, tab = {"visitor": None, "session": None}, uuid.uuid4().hex[:12]
                for n in range(turns_each):
                    try:
                        reply = await client.turn(f"turn {n}", browser, session_hash=tab)
                    except httpx.HTTPError:
                        reply = Reply()
                    errors += not reply.ok
                    latencies.append(reply.total_s)
                    browser = reply.browser if reply.ok else browser

            started = time.perf_counter()
            await asyncio.gather(*(visitor(i) for i in range(level)))
            wall = time.perf_counter() - started
            throughput = level * turns_each / wall
            ideal = level / pace.total
            results[str(level)] = {
                "turns_per_s": throughput, "ideal_turns_per_s": ideal, "of_ideal": throughput / ideal,
                "p95_latency_s": percentile(latencies, 0.95), "errors": errors,
            }
    return results


def translation(sizes: list[int]) -> dict:
    renderers = {
        "gemma": lambda m, h: history.process_message_gemma(m, h),
        "codelab": lambda m, h: history.process_message_gemma(m, h, template="codelab"),
        "gemini": history.process_message_gemini,
        "openai": history.process_message_openai,
    }
    results: dict = {}
    for size in sizes:
        pairs = [[f"question {n} about something", f"answer {n} with some detail"] for n in range(size)]
        for name, render in renderers.items():
            runs = max(1, 2000 // size)
            seconds = min(timeit.repeat(lambda: render("next", pairs), number=runs, repeat=3)) / runs
            results.setdefault(name, {})[str(size)] = {"ms": seconds * 1000, "us_per_turn": seconds * 1e6 / size}
    return results


def store_latency(store_url: str, sizes: list[int]) -> dict:
    results = {}
    for size in sizes:
        store = open_store(store_url, resilient=False)
        session = store.create_session("bench-store")
        appends = []
        for n in range(size):
            turn = Turn(user=f"question {n}", model="gemma", reply=f"answer {n} " * 20)
            started = time.perf_counter()
            store.append(session, turn)
            appends.append((time.perf_counter() - started) * 1000)
        loads = []
        for _ in range(5):
            started = time.perf_counter()
            assert len(store.load(session)) == size
            loads.append((time.perf_counter() - started) * 1000)
        results[str(size)] = {"append_ms": summary(appends), "load_ms": summary(loads)}
        store.close()
    return results


def run(quick: bool, firestore: bool) -> dict:
    turns = 5 if quick else 40
    levels = [1, 2] if quick else [1, 8, 32, 64]
    scratch = Path(tempfile.mkdtemp(prefix="hybridchat-bench-"))
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}}

    store_url = f"sqlite:///{scratch}/latency.db"
    long_session = seed_long_session(store_url, 200)
    with paced_server(LATENCY_PACE) as (vllm, _), app_server(vllm, store_url) as (base, _):
        results["overhead"] = asyncio.run(overhead(base, LATENCY_PACE, turns, long_session))

    with paced_server(LOAD_PACE) as (vllm, _):
        with app_server(vllm, f"sqlite:///{scratch}/load.db") as (base, pid):
            time.sleep(1)
            idle = rss_mib(pid)
            results["concurrency"] = asyncio.run(concurrency(base, LOAD_PACE, levels, 1 if quick else 3))
            results["memory_mib"] = {"idle": idle, f"after {max(levels)} sessions": rss_mib(pid)}
        with app_server(vllm, f"sqlite:///{scratch}/baseline.db", concurrency=1, stream=False) as (base, _):
            results["baseline"] = asyncio.run(concurrency(base, LOAD_PACE, levels, 1))

    results["translation"] = translation([10, 100] if quick else [10, 100, 1000, 10000])
    results["store"] = {"sqlite": store_latency(f"sqlite:///{scratch}/store.db", [10] if quick else [10, 1000])}
    if firestore:
        from hybridchat.store.emulator import FirestoreEmulator

        with FirestoreEmulator(project="hybridchat-bench") as emulator:
            url = f"firestore://chat-app-db?project={emulator.project}"
            results["store"]["firestore emulator"] = store_latency(url, [10] if quick else [10, 1000])
    if not quick:  # the real vLLM engine: the tests run the same code on a short chat
        engine = ModelServer("vllm", scratch)
        engine.start()
        try:
            results["prefix_cache"] = prefix_cache.run(engine.url, turns=30)
        finally:
            engine.stop()
    return results


def report(results: dict) -> list[tuple[str, str, str, str]]:
    """Rows of (measure, result, target, met)."""
    rows = []
    for name, measured in results["overhead"].items():
        over, ttft = measured["overhead_ms"], measured["ttft_added_ms"]
        rows.append((f"overhead per turn, {name}", f"p50 {over['p50']:.1f} ms, p95 {over['p95']:.1f} ms",
                     "p50 < 5 ms, p95 < 20 ms", "yes" if over["p50"] < 5 and over["p95"] < 20 else "no"))
        rows.append((f"time to first token added, {name}", f"p50 {ttft['p50']:.1f} ms", "< 10 ms", "yes" if ttft["p50"] < 10 else "no"))
    single = results["concurrency"][min(results["concurrency"], key=int)]["p95_latency_s"]
    for level, ours in results["concurrency"].items():
        base = results["baseline"][level]
        met = ours["of_ideal"] >= 0.9 and ours["errors"] == 0 and ours["p95_latency_s"] <= 1.5 * single
        rows.append((f"{level} chats at once: turns/s (ideal {ours['ideal_turns_per_s']:.1f})",
                     f"{ours['turns_per_s']:.2f} = {ours['of_ideal']:.0%} of ideal, p95 {ours['p95_latency_s']:.2f} s, "
                     f"{ours['errors']} errors; codelab design {base['turns_per_s']:.2f} ({ours['turns_per_s'] / base['turns_per_s']:.1f}x)",
                     "≥ 90% of ideal, 0 errors, p95 ≤ 1.5× one chat's", "yes" if met else "no"))
    for name, sizes in results["translation"].items():
        per_turn = ", ".join(f"{size}: {v['us_per_turn']:.2f}" for size, v in sizes.items())
        thousand = sizes.get("1000", {}).get("ms")
        rows.append((f"translate history ({name}), µs per turn", per_turn,
                     "linear; 1,000 turns < 10 ms", "" if thousand is None else ("yes" if thousand < 10 else "no")))
    for store, sizes in results["store"].items():
        for size, v in sizes.items():
            met = "yes" if store == "sqlite" and size == "1000" and v["load_ms"]["p50"] < 100 else ""
            rows.append((f"{store}, {size} turns", f"append p50 {v['append_ms']['p50']:.2f} ms, load p50 {v['load_ms']['p50']:.1f} ms",
                         "load of 1,000 turns < 100 ms (SQLite)" if store == "sqlite" and size == "1000" else "", met))
    memory = results["memory_mib"]
    rows.append(("app memory (RSS)", ", ".join(f"{k}: {v:.0f} MiB" for k, v in memory.items()), "", ""))
    if "prefix_cache" in results:
        rows += [(measure, result, "", "") for measure, result in prefix_cache.report(results["prefix_cache"])]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run, to check the benchmark works")
    parser.add_argument("--no-firestore", action="store_true", help="skip the Firestore emulator")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.monotonic()
    results = run(args.quick, firestore=not args.no_firestore)
    results["seconds"] = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    for section, value in results.items():
        (args.out / f"{section}.json").write_text(json.dumps(value, indent=2) + "\n")

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"hybridchat benchmarks ({results['machine']['cpus']} CPUs, {results['seconds']:.0f} s)")
    for column in ("measure", "result", "target", "met"):
        table.add_column(column)
    for row in report(results):
        table.add_row(*row)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
