"""The benchmark, run at a tiny size so it cannot rot (timings are not asserted: see bench/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow  # the whole benchmark, HAProxy included

ROOT = Path(__file__).resolve().parents[1]


def test_the_benchmark_runs_and_writes_its_results(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--no-firestore", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "overhead per turn, 200-turn history" in result.stdout
    overhead = json.loads((tmp_path / "overhead.json").read_text())
    assert set(overhead) == {"short history", "200-turn history"}
    assert overhead["short history"]["overhead_ms"]["n"] == 5
    load = json.loads((tmp_path / "concurrency.json").read_text())
    assert set(load) == {"1", "2"} and all(level["errors"] == 0 for level in load.values())
    baseline = json.loads((tmp_path / "baseline.json").read_text())
    assert baseline["2"]["turns_per_s"] > 0
    floor_load = json.loads((tmp_path / "floor_concurrency.json").read_text())
    assert set(floor_load) == {"1", "2"} and all(level["errors"] == 0 for level in floor_load.values()), "the floor too"
    assert json.loads((tmp_path / "machine.json").read_text())["date"], "the run's date, for docs/performance.md"
    floor = json.loads((tmp_path / "floor.json").read_text())
    assert set(floor) == {"short history"} and floor["short history"]["overhead_ms"]["n"] == 5
    assert "app ÷ floor, overhead per turn" in result.stdout
    pair = json.loads((tmp_path / "side_by_side.json").read_text())["short history"]
    assert pair["overhead_ms"]["n"] == 5 and "side-by-side turn ÷ floor, overhead per turn" in result.stdout
    assert all(level["cpu_ms_per_turn"] > 0 for level in [*load.values(), *baseline.values()]), "the app's own CPU"
    assert json.loads((tmp_path / "shown_once.json").read_text())["1"]["cpu_ms_per_turn"] > 0
    assert json.loads((tmp_path / "idle_cpu.json").read_text())["share_of_a_core"] > 0
    rehearsed = json.loads((tmp_path / "rehearse.json").read_text())
    assert rehearsed["chats"] == 4 and not rehearsed["errors"] and rehearsed["ratio"] > 0, "room rehearse's own cost"
    assert "room rehearse, 4 chats: time to first token" in result.stdout
    scale_out = json.loads((tmp_path / "scale_out.json").read_text())
    assert set(scale_out) == {"1", "2", "floor, 2"} and all(run["errors"] == 0 for run in scale_out.values()), \
        "the app, then bare Gradio, through HAProxy"
    assert all(0 < run["machine_busy"] <= 1 and run["driver_cpu_ms_per_turn"] > 0 for run in scale_out.values())
    two = json.loads((tmp_path / "replicas.json").read_text())  # the stand-ins, in a quick run
    assert set(two["routings"]) == {"round-robin", "by conversation"} and "prefix cache, two replicas" in result.stdout
    translation = json.loads((tmp_path / "translation.json").read_text())
    assert set(translation) == {"gemma", "codelab", "gemini", "openai"}
    assert json.loads((tmp_path / "memory_mib.json").read_text())["idle"] > 0
    from bench import docs

    results = docs.load(tmp_path)
    page = docs.render(results)
    assert "app ÷ floor, overhead per turn" in page and "## The last run" in page
    [throughput] = docs.plot(results, tmp_path / "images")
    assert throughput.stat().st_size > 10_000, "docs/performance.md's plot, from the same results"


def test_two_replicas_by_conversation_keep_a_chat_on_one_and_round_robin_spreads_it(tiny_model):
    """bench.replicas' two routings, on two stand-ins behind the real HAProxy (one chat each, so
    that round-robin's order is the chat's own): by conversation, every turn after the first
    (which has no session yet) reaches one server; round-robin, they alternate."""
    from bench import replicas
    from hybridchat.lab.local import BackgroundServer
    from hybridchat.serve_local import create_app

    with BackgroundServer(create_app(tiny_model)) as first, BackgroundServer(create_app(tiny_model)) as second:
        results = replicas.run([first, second], count=1, turns=4, ask=lambda n: f"Turn {n}: say hi.")
        served: dict[str, dict[int, str]] = {}  # routing → its chat's turns (by how many messages it sent) → server
        for url in (first, second):
            for request in httpx.get(f"{url}/stand-in/requests").json():
                routing = next(name for name in replicas.ROUTINGS if f"the {name} room" in request["messages"][0]["content"])
                turn = sum(1 for m in request["messages"] if m["role"] == "user") - 1
                served.setdefault(routing, {})[turn] = url
    assert {routing: measured["turns"] for routing, measured in results["routings"].items()} == dict.fromkeys(
        replicas.ROUTINGS, 4)
    by_conversation, round_robin = served["by conversation"], served["round-robin"]
    assert sorted(by_conversation) == sorted(round_robin) == [0, 1, 2, 3]
    assert len({by_conversation[turn] for turn in (1, 2, 3)}) == 1, by_conversation
    assert [round_robin[turn] for turn in (1, 2, 3)] in ([second, first, second], [first, second, first]), round_robin
    assert next(measure for measure, _ in replicas.report(results)) == "prefix cache, two replicas, round-robin"
