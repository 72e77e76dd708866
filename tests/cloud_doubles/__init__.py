"""Test doubles for the workshop's cloud CLIs: ``gcloud``, ``terraform``, ``kubectl``, ``skaffold``.

`install(bin_dir, state_dir)` writes one executable per tool; put `bin_dir` first on PATH. Each
invocation runs ``cloud_doubles.main(TOOL, ARGS)``, which:

* checks the command line against the real tool's syntax, for the commands the workshop uses,
  and refuses anything else as the real tool does (its message and exit status);
* answers with the real tool's output, recorded, including the slow and failing answers (the
  GPU pod `Pending` with its "Insufficient nvidia.com/gpu" event for a few polls, the load
  balancer without an IP for a few polls, quota too small, billing off, not logged in);
* runs the real offline check where one exists: `terraform fmt` for real, `kubectl apply
  --dry-run=client` against the stub API server (`kube_api.py`);
* does the local part for real: `kubectl port-forward` forwards TCP to a local vLLM-protocol
  server, `skaffold run` builds the image's context by Docker's `.dockerignore` rules and starts
  the app on 127.0.0.1 from it (its load balancer IP), `kubectl exec` runs a command in the app's
  environment, `kubectl delete` stops it.

What exists (APIs, buckets, cluster, secrets, workloads) lives in `state.json` in the state
folder; every command line run is appended to `commands.log` there.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

from .gcloud import auth_plugin_specs, gcloud_specs
from .grammar import Refused, parse
from .kubectl import kubectl_specs
from .pods import stop
from .skaffold import skaffold_specs
from .state import ROOT, State, initial_state
from .terraform import terraform_specs

TOOLS = ("gcloud", "terraform", "kubectl", "skaffold", "gke-gcloud-auth-plugin")

__all__ = ["commands", "initial_state", "install", "main", "stop_all"]

SPECS = {"gcloud": gcloud_specs, "terraform": terraform_specs, "kubectl": kubectl_specs, "skaffold": skaffold_specs,
         "gke-gcloud-auth-plugin": auth_plugin_specs}


def main(tool: str, argv: list[str]) -> int:
    folder = Path(os.environ["CLOUD_DOUBLES_DIR"])
    with (folder / "commands.log").open("a") as log:  # secret literals (the HF token) masked
        log.write(shlex.join([tool, *(re.sub(r"^(--from-literal=[^=]+=).*", r"\1****", a) for a in argv)]) + "\n")
    state = State(folder)
    try:
        call, spec = parse(tool, argv, SPECS[tool](state))
        output = spec.run(call)
    except Refused as refused:
        state.save()
        print(refused, file=sys.stderr)
        return refused.status
    state.save()
    sys.stdout.write(output)
    return 0


def install(bin_dir: Path, state_dir: Path, state: dict, kubeconfig: Path) -> None:
    """Shims for every tool in ``bin_dir``, and the starting ``state`` in ``state_dir``;
    ``kubeconfig`` points the real kubectl's dry runs at the stub API server."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "state.json").write_text(json.dumps(state, indent=1))
    (state_dir / "commands.log").write_text("")
    settings = {
        "CLOUD_DOUBLES_DIR": state_dir,
        "CLOUD_DOUBLES_KUBECONFIG": kubeconfig,
        "CLOUD_DOUBLES_REAL_KUBECTL": shutil.which("kubectl"),
        "CLOUD_DOUBLES_REAL_TERRAFORM": shutil.which("terraform"),
    }
    exports = " ".join(f"{name}={shlex.quote(str(value))}" for name, value in settings.items())
    # -P: not the caller's folder on sys.path, only the repository and the tests' helpers.
    run = f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(Path(__file__).parents[1])!r}]; import cloud_doubles; " \
          "sys.exit(cloud_doubles.main(sys.argv[1], sys.argv[2:]))"
    for tool in TOOLS:
        shim = bin_dir / tool
        shim.write_text(f"#!/bin/sh\n{exports} exec {shlex.quote(sys.executable)} -P -c {shlex.quote(run)} {tool} \"$@\"\n")
        shim.chmod(0o755)


def stop_all(state_dir: Path) -> None:
    """Stop what the doubles left running: port-forwards, and the app skaffold started."""
    state = json.loads((state_dir / "state.json").read_text())
    for pid in [*state["forwards"], *([state["app"]["pid"]] if state["app"] else []), *([state["gateway"]] if state["gateway"] else [])]:
        stop(pid)


def commands(state_dir: Path, workspace: Path | None = None) -> list[str]:
    """The command lines run since the last call: the repository's path written ``<repo>``, the
    learner's workspace ``<workspace>``, a port-forward's free local port ``PORT``."""
    log = state_dir / "commands.log"
    text = log.read_text().replace(str(workspace), "<workspace>") if workspace else log.read_text()
    text = re.sub(r"port-forward (\S+) \d+:", r"port-forward \1 PORT:", text.replace(str(ROOT), "<repo>"))
    log.write_text("")
    return text.splitlines()

