"""gcp mode's own parts: the cloud CLIs' doubles against the real tools, the preflight passing and
failing, the background port-forward, and the checkers that check what was sent."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import fake_google
import httpx
import pytest
import requests
from conftest import DOUBLES_PROJECT as PROJECT

from hybridchat.history import process_message_gemma
from hybridchat.lab import check, gcp, preflight
from hybridchat.lab.shell import Background, CommandFailed, command

# --- the doubles speak the real tools' syntax ------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["gcloud", "servces", "enable", "x"],
        ["gcloud", "services", "enable", "x", "--bogus"],
        ["kubectl", "aply", "-f", "x.yaml"],
        ["kubectl", "apply", "--bogus", "-f", "x.yaml"],
        ["kubectl", "port-forward"],
        ["terraform", "aply"],
        ["terraform", "init", "-chdir=infra"],  # a global option after the subcommand
        ["terraform", "plan", "-bogus"],
    ],
)
def test_a_mistyped_command_is_refused_as_the_real_tool_refuses_it(doubles, tmp_path, argv):
    """Each of these the real tool refuses offline: the double's first line and exit status match."""
    (tmp_path / "terraformrc").write_text("")
    env = {**os.environ, "TF_CLI_CONFIG_FILE": str(tmp_path / "terraformrc")}  # no warning about its absence
    real = subprocess.run([shutil.which(argv[0], path=os.environ["PATH"].split(os.pathsep, 1)[1]), *argv[1:]],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60, env=env)
    double = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=60, env=env)
    assert double.returncode == real.returncode != 0

    def first_line(result: subprocess.CompletedProcess) -> str:
        text = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
        lines = [line.strip("╷│╵ ") for line in text.splitlines()]
        return next(line for line in lines if line).split("Did you mean")[0].strip()

    assert first_line(double) == first_line(real)


# --- the preflight ---------------------------------------------------------------------------------


def test_the_real_gcloud_logged_out_is_told_to_log_in(tmp_path, monkeypatch):
    """The real gcloud, with a fresh configuration: nothing on stdout, a warning on stderr."""
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    result = preflight.account()
    assert not result.ok and "gcloud auth login" in result.detail


def test_the_preflight_passes_on_a_ready_project(doubles, capsys):
    results = preflight.preflight(PROJECT, "us-central1", fake_google.GRANTED_TOKEN)
    assert all(result.ok for result in results) and len(results) == 7
    shown = capsys.readouterr().out
    assert "✅ L4 GPU quota: 4 L4 free in us-central1, 4 GPUs in all regions; Gemma needs 2" in shown
    assert "✅ Hugging Face token: has access to google/gemma-3-12b-it" in shown


@pytest.mark.parametrize(
    "state, token, failed, told",
    [
        ({"account": ""}, fake_google.GRANTED_TOKEN, "gcloud account", "run `gcloud auth login`"),
        ({"adc": False}, fake_google.GRANTED_TOKEN, "application-default credentials", "gcloud auth application-default login"),
        ({"billing": False}, fake_google.GRANTED_TOKEN, "billing", "billing/linkedaccount?project=workshop-project"),
        ({"enabled_apis": ["serviceusage.googleapis.com"]}, fake_google.GRANTED_TOKEN, "APIs",
         "gcloud services enable compute.googleapis.com --project=workshop-project"),  # the quota is unread too
        ({"l4_quota": 1}, fake_google.GRANTED_TOKEN, "L4 GPU quota", "1 L4 free in us-central1, 4 GPUs in all regions; Gemma needs 2"),
        ({"gpus_all_regions": 0}, fake_google.GRANTED_TOKEN, "L4 GPU quota", "ask for more (GPUS_ALL_REGIONS)"),
        ({}, fake_google.UNGRANTED_TOKEN, "Hugging Face token", "accept its licence at https://huggingface.co/google/gemma-3-12b-it"),
        ({}, "hf_wrong", "Hugging Face token", "not a valid token"),
        ({}, "", "Hugging Face token", "missing"),
    ],
)
def test_each_preflight_failure_says_what_to_do_and_stops(doubles, capsys, state, token, failed, told):
    doubles(**state)
    with pytest.raises(preflight.PreflightFailed, match="nothing was created"):
        preflight.preflight(PROJECT, "us-central1", token)
    shown = capsys.readouterr().out
    line = next(line for line in shown.splitlines() if line.startswith(f"❌ {failed}:"))
    assert told in line
    assert shown.count("❌") == (2 if failed == "APIs" else 1), shown


# --- a background command ------------------------------------------------------------------------


def test_a_background_command_stops_when_a_later_cell_fails():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    sleeper = None
    try:
        sleeper = Background(command("sleep", "60"), lambda: True)
        shell.run_cell("x = 1")
        assert sleeper.process.poll() is None, "a cell that works leaves it running"
        shell.run_cell("1 / 0")
        assert sleeper.process.poll() is not None, "a failed cell stopped it"
        first = sleeper.process.pid
        shell.run_cell("x = 2")  # the learner fixes the cell and runs it again
        assert sleeper.process.poll() is None and sleeper.process.pid != first, "started again for the next cell"
        sleeper.stop()
        shell.run_cell("1 / 0")
        shell.run_cell("x = 3")
        assert sleeper.process.poll() is not None, "stop() is for good"
    finally:
        if sleeper is not None:
            sleeper.stop()
        InteractiveShell.clear_instance()


def test_a_background_command_that_never_answers_is_explained():
    started = time.monotonic()
    with pytest.raises(CommandFailed, match=r"did not answer within 0.5 s. Is it up\?"):
        Background(command("sleep", "60"), lambda: False, timeout=0.5, hint="Is it up?")
    assert time.monotonic() - started < 5
    with pytest.raises(CommandFailed, match=r"stopped \(exit 3\).*\n.*gone"):
        Background(command(sys.executable, "-c", "print('gone'); raise SystemExit(3)"), lambda: False, timeout=10)


# --- the model-caller checkers check what was sent -----------------------------------------------


def gemma_caller(url: str, **changes):
    """A learner's call_gemma_model, right unless ``changes`` say otherwise."""

    def call(prompt, temperature, top_p, max_tokens):
        body = {"model": requests.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"], "prompt": prompt,
                "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "stop": ["<end_of_turn>"], **changes}
        return requests.post(f"{url}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"].strip()

    return call


def test_the_gemma_checker_passes_a_right_caller(stand_in, capsys):
    check.gemma_caller(gemma_caller(stand_in), stand_in)
    assert "✅ call_gemma_model answered" in capsys.readouterr().out


@pytest.mark.parametrize(
    "caller, hint",
    [
        (lambda url: lambda *_: "Paris", "did not send anything to the model"),
        (lambda url: gemma_caller(url, temperature=0.9), "must send the temperature it is given: it was called with temperature=0.35, the model received 0.9"),
        (lambda url: gemma_caller(url, top_p=1.0), "must send the top_p it is given"),
        (lambda url: gemma_caller(url, max_tokens=64), "must send the max_tokens it is given"),
        (lambda url: gemma_caller(url, stop=None), 'send `"stop": ["<end_of_turn>"]`'),
        (lambda url: lambda prompt, *a: gemma_caller(url)(prompt, *a) + " (checked)", "must return the model's text"),
        (lambda url: lambda prompt, *a: gemma_caller(url)(process_message_gemma("Hi", []), *a), "did not send the question"),
    ],
)
def test_the_gemma_checker_catches_a_caller_that_does_not_call(stand_in, caller, hint):
    with pytest.raises(check.CheckFailed, match=_escape(hint)):
        check.gemma_caller(caller(stand_in), stand_in)


def test_the_gemini_checker_checks_what_was_sent(stand_in, capsys):
    from conftest import api_key_client

    client = api_key_client(stand_in)

    def caller(contents, temperature, top_p, max_tokens, **changes):
        config = {"temperature": temperature, "top_p": top_p, "max_output_tokens": max_tokens, **changes}
        return client.models.generate_content(model="gemini-2.5-flash", contents=contents, config=config).text

    check.gemini_caller(caller, stand_in)
    assert "✅ call_gemini_model answered" in capsys.readouterr().out
    with pytest.raises(check.CheckFailed, match="did not send anything"):
        check.gemini_caller(lambda *_: "Paris", stand_in)
    with pytest.raises(check.CheckFailed, match="must send the temperature it is given"):
        check.gemini_caller(lambda c, t, p, m: caller(c, 1.0, p, m), stand_in)
    with pytest.raises(check.CheckFailed, match="must send the max_output_tokens it is given"):
        check.gemini_caller(lambda c, t, p, m: caller(c, t, p, m, max_output_tokens=64), stand_in)


def test_against_a_server_that_keeps_no_requests_only_the_reply_is_checked(fault_server, capsys):
    check.gemma_caller(lambda *_: "Paris.", fault_server.url)
    said = capsys.readouterr().out
    assert "✅ call_gemma_model answered: 'Paris.'" in said and "what was sent is not checked here" in said


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_the_port_forward_waits_until_gemma_answers(doubles, stand_in):
    deployed = {"deployment.apps/vllm-gemma-deployment": "gemma3-12b-deploy.yaml", "service/gemma-service": "gemma3-12b-deploy.yaml"}
    doubles(gemma_url=stand_in, kube_context="gke_workshop", objects=deployed, pod_polls=9)
    forward = gcp.forward_gemma(timeout=30)
    try:
        assert httpx.get(f"{forward.url}/v1/models", timeout=10).json()["data"][0]["id"]
        assert "Forwarding from 127.0.0.1:" in forward.output()
        again = gcp.forward_gemma(timeout=30)  # the cell run again: the first forward goes
        assert forward.process.poll() is not None and again.process.poll() is None
    finally:
        forward.stop()
        again.stop()
    assert again.process.poll() is not None
    doubles(gemma_url=stand_in, kube_context="gke_workshop", objects=deployed)  # the pod still Pending
    with pytest.raises(CommandFailed, match=r"pod is not running. Current status=Pending"):
        gcp.forward_gemma(timeout=30)
    doubles(gemma_url=stand_in, kube_context="gke_workshop")  # no Gemma deployed
    with pytest.raises(CommandFailed, match=r'services "gemma-service" not found'):
        gcp.forward_gemma(timeout=30)
