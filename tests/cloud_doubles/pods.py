"""The app's pod as a local process, started from what the image holds, and the Gateway in
front of it once applied: what `skaffold run` and `kubectl rollout restart` deploy."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from .grammar import Refused
from .state import ROOT, State


def _in_image(value: str, image: dict[str, str]) -> str:
    """A path in the app's container as a path here, where it lies inside what the image copied."""
    for target, here in image.items():
        if value == target or value.startswith(target.rstrip("/") + "/"):
            return here + value[len(target.rstrip("/")):]
    return value


def deploy(state: State) -> None:
    """The app's pod as the cluster would run it now (started anew if one runs), and the
    Gateway in front of it once ``chat-gateway.yaml`` is applied: IAP's double, signing people
    in, if ``chat-iap-policy.yaml`` and its OAuth Secret are there too, else passing requests
    through as a Gateway without IAP does."""
    from hybridchat.lab.local import free_port

    if state["app"]:
        stop(state["app"]["pid"])
    state["app_port"] = state["app_port"] or free_port()
    manifest = ROOT / "deploy" / "chat-deploy.yaml"
    # The ConfigMap's settings, then this machine's (the stand-ins' URLs), then the Secrets'.
    config = next(d for d in yaml.safe_load_all(manifest.read_text()) if d and d["kind"] == "ConfigMap")["data"]
    env = {**config, **state["app_env"], **_env_from_refs(manifest, state)}
    env = {name: _in_image(value, state["image"]) for name, value in env.items()}
    behind_gateway = "gateway.gateway.networking.k8s.io/gradio-chat-gateway" in state["objects"]
    if behind_gateway:
        env["HYBRIDCHAT_IAP_KEYS_URL"] = f"http://127.0.0.1:{state['gateway_port']}/_iap_double/public_key"
    state["app"] = {**_start_app(env, state["app_port"]), "env": env}
    if behind_gateway and not state["gateway"]:
        iap_on = "gcpbackendpolicy.networking.gke.io/gradio-chat-backend" in state["objects"] and "gradio-chat-oauth" in state["secrets"]
        members = [m.partition(":")[2] for m in state["iap_members"] if m.startswith("user:")]
        argv = [sys.executable, str(Path(__file__).parents[1] / "iap_double.py"), "--port", str(state["gateway_port"]),
                "--upstream", f"http://127.0.0.1:{state['app_port']}",
                "--audience", f"/projects/{state['project_number']}/global/backendServices/{state['backend_service_id']}",
                "--members", ",".join(members), "--key-file", str(state.folder / "iap_key.pem"), *([] if iap_on else ["--open"])]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        state["gateway"] = process.pid
        _wait_until_answers(f"http://127.0.0.1:{state['gateway_port']}/_iap_double/public_key", process)


def _env_from_refs(manifest: Path, state: State) -> dict[str, str]:
    """The app container's variables from Secrets and ConfigMaps (its manifest's
    ``secretKeyRef``s and ``configMapKeyRef``s), as the kubelet gives them: a required one that
    is missing keeps the pod from starting; an optional one is left unset."""
    deployment = next(d for d in yaml.safe_load_all(manifest.read_text()) if d and d["kind"] == "Deployment")
    env = {}
    for variable in deployment["spec"]["template"]["spec"]["containers"][0].get("env", []):
        source = variable.get("valueFrom", {})
        kind, ref = ("secret", source["secretKeyRef"]) if "secretKeyRef" in source else ("configmap", source.get("configMapKeyRef"))
        if ref is None:
            continue
        data = state["secrets" if kind == "secret" else "configmaps"].get(ref["name"])
        if data is None or ref["key"] not in data:
            if ref.get("optional"):
                continue
            raise Refused(f"deployment/gradio-chat-deployment failed to stabilize: its pod is in CreateContainerConfigError "
                          f'({kind} "{ref["name"]}" not found)')
        env[variable["name"]] = data[ref["key"]]
    return env


def _wait_until_answers(url: str, process: subprocess.Popen) -> None:
    import httpx
    from conftest import wait_for  # the tests' one poll (imported when needed: conftest loads the app)

    def answers_or_exited() -> str | None:
        if process.poll() is not None:
            return "exited"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return "answers"
        return None

    with contextlib.suppress(AssertionError):  # gave up: as a pod that never gets ready
        if wait_for(answers_or_exited, 120, every=0.2) == "answers":
            return
    stop(process.pid)
    raise Refused("deployment/gradio-chat-deployment failed to stabilize (its pod would be in CrashLoopBackOff)")


def _start_app(env: dict[str, str], port: int) -> dict:
    """The chat app as a local process: what the cluster would run, at 127.0.0.1:PORT."""
    process = subprocess.Popen(
        [sys.executable, "-m", "hybridchat.cli", "app", "--port", str(port)],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    _wait_until_answers(f"http://127.0.0.1:{port}/healthz", process)
    return {"pid": process.pid, "port": port}


def stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)

