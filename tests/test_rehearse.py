"""``hybridchat room rehearse`` against the keyed stand-in (test_vllm_engine.py drives the real
engine with it too), and what it says of a wrong key, a wrong URL and a server that is not vLLM."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from test_room_gemma import KEY, WRONG, room_gemma  # noqa: F401 (a fixture)
from typer.testing import CliRunner

from hybridchat.cli import app
from hybridchat.lab.local import BackgroundServer
from hybridchat.rehearse import Rehearsal, TurnResult, percentile

SMALL = ["--chats", "3", "--turns", "2", "--think", "0", "--max-tokens", "8"]


def rehearse(url: str, key: str | None, monkeypatch, *more: str):
    if key:
        monkeypatch.setenv("HYBRIDCHAT_VLLM_API_KEY", key)
    else:
        monkeypatch.delenv("HYBRIDCHAT_VLLM_API_KEY", raising=False)
    return CliRunner().invoke(app, ["room", "rehearse", "--url", url, *SMALL, *more])


def test_rehearse_drives_the_keyed_stand_in_and_prints_its_table_and_verdict(room_gemma, monkeypatch, tmp_path):  # noqa: F811
    ran = rehearse(room_gemma, KEY, monkeypatch, "--json", str(tmp_path / "r.json"), "--ttft-goal", "60")
    assert ran.exit_code == 0, ran.output
    lines = ran.stdout.splitlines()
    assert lines[0].startswith(f"The room's Gemma at {room_gemma}, serving ")
    assert "turns answered" in ran.output and "6 of 6" in ran.output
    assert "time to first token, p50 / p95" in ran.output and "errors                                  none" in ran.output
    # The stand-in's /metrics: one reply written at a time, the others waiting; no prefix cache.
    [queue] = [line for line in lines if "queue (vllm:num_requests_waiting), max" in line]
    assert "(1 running at most)" in queue, queue
    assert "prefix cache hit rate                   no prompt looked up" in ran.output
    assert lines[-1].startswith("holds 3 chats: p95 to first token ")
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["holds"] is True and len(record["turns_measured"]) == 6 and record["ttft_p95_s"] > 0
    assert KEY not in ran.output and KEY not in (tmp_path / "r.json").read_text()


def test_a_goal_the_server_misses_is_said_with_what_to_do(room_gemma, monkeypatch):  # noqa: F811
    ran = rehearse(room_gemma, KEY, monkeypatch, "--ttft-goal", "0")
    assert ran.exit_code == 1
    assert ran.output.splitlines()[-1].startswith("p95 to first token ") and "add a replica (docs/instructors.md)" in (
        ran.output)


@pytest.fixture(scope="module")
def not_vllm():
    web = FastAPI()
    web.get("/v1/models")(lambda: HTMLResponse("<html>a sign-in page</html>"))
    with BackgroundServer(web) as url:
        yield url


def test_a_wrong_key_a_wrong_url_and_a_server_that_is_not_vllm_get_one_line_each(room_gemma, not_vllm,  # noqa: F811
                                                                                 closed_port_url, monkeypatch):
    for url, key, said in [
        (room_gemma, WRONG, "refused the key (HTTP 401): set HYBRIDCHAT_VLLM_API_KEY to the room's key."),
        (room_gemma, None, "wants a key (HTTP 401): set HYBRIDCHAT_VLLM_API_KEY to the room's key."),
        (closed_port_url, KEY, f"nothing answers at {closed_port_url} (ConnectError): check the address."),
        (not_vllm, KEY, "does not answer as vLLM: GET /v1/models gave HTTP 200 (text/html), not its list of models."),
        ("gemma.example:8000", KEY, "gemma.example:8000 is not an http:// or https:// address."),
    ]:
        ran = rehearse(url, key, monkeypatch)
        assert ran.exit_code == 2, (url, ran.output)
        assert ran.output.strip().endswith(said) and len(ran.output.strip().splitlines()) == 1, ran.output
        assert "Traceback" not in ran.output and (key is None or key not in ran.output)


def test_the_verdict_names_failures_and_the_queue_before_speed():
    def measured(errors: int, queue: float | None) -> Rehearsal:
        results = [TurnResult(0, i, 0.5, 1.0, 20) for i in range(20)]
        results += [TurnResult(1, i, None, 30.0, 0, "timed out") for i in range(errors)]
        return Rehearsal("http://g", "m", 2, 20, 0, 8, results, queue_max=queue, running_max=4, prefix_hit_rate=0.5)

    assert measured(0, 0).verdict(2.0, 2) == (True, "holds 2 chats: p95 to first token 0.5 s")
    assert measured(0, 12).verdict(2.0, 2) == (False, "the queue reached 12: add a replica (docs/instructors.md)")
    holds, said = measured(3, 12).verdict(2.0, 2)
    assert not holds and said.startswith("3 of 23 turns failed (3 timed out)")
    assert measured(1, None).verdict(2.0, 2)[0], "one failure in 21 is not the server's fault alone"
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0 and percentile([], 95) is None
