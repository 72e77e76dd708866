"""The processes the benchmark (and the tests) start, each ready once it answers and stopped on
exit: the paced token server, the app, the bare Gradio floor; and what the kernel counts of them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from hybridchat.lab.local import free_port, stop_process

# The app signs visitor ids; the driver knows its key so it can open the 200-turn session it seeded.
BENCH_SECRET = "benchmark-only-session-secret"


@dataclass(frozen=True)
class Pace:
    """The paced server's timing: first token after ``ttft``, then one every ``gap``."""

    ttft: float
    tokens: int
    gap: float

    @property
    def total(self) -> float:
        return self.ttft + (self.tokens - 1) * self.gap


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
        "HYBRIDCHAT_TURNS_PER_MINUTE": "0", "HYBRIDCHAT_NEWCOMER_TURNS_PER_MINUTE": "0", "HYBRIDCHAT_STREAMS_PER_CLIENT": "0",
        **(env or {}),
    }
    argv = [sys.executable, "-m", "hybridchat.cli", "app", "--port", str(port)]
    with serving(argv, f"http://127.0.0.1:{port}/healthz", env, output) as process:
        yield f"http://127.0.0.1:{port}", process.pid


@contextmanager
def bare_gradio_server(vllm_url: str) -> Iterator[tuple[str, int]]:
    """The floor (``bench.bare_gradio``) as its own process: (its URL, its pid)."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.bare_gradio", "--port", str(port), "--vllm", vllm_url]
    with serving(argv, f"http://127.0.0.1:{port}/healthz") as process:
        yield f"http://127.0.0.1:{port}", process.pid


def cpu_seconds(*pids: int) -> float:
    """The processes' CPU time so far, user and system, as the kernel counts it."""
    ticks = 0
    for pid in pids:
        # Fields 14 and 15 of /proc/PID/stat (after the command name, which may hold spaces).
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, every core summed (``/proc/stat``)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), sum(ticks) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
