"""``kubectl``: dry runs against the stub API server, the Gemma pod's slow start, port-forwards."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from .grammar import Call, Refused, Spec
from .pods import deploy, stop
from .state import State


def kubectl_specs(state: State) -> dict[tuple[str, ...], Spec]:
    def connected() -> None:
        if not state["kube_context"]:
            raise Refused("E1125 12:00:00.000000 memcache.go:265] couldn't get current server API group list: "
                          "Get \"http://localhost:8080/api?timeout=32s\": dial tcp 127.0.0.1:8080: connect: connection refused\n"
                          "The connection to the server localhost:8080 was refused - did you specify the right host or port?")

    def objects(manifest: Path) -> list[str]:
        """Each object as kubectl names it: its kind, in lower case, then its API group (none for the core's)."""
        def named(doc: dict) -> str:
            group = doc["apiVersion"].rpartition("/")[0]
            return f"{doc['kind'].lower()}{'.' + group if group else ''}/{doc['metadata']['name']}"

        return [named(d) for d in yaml.safe_load_all(manifest.read_text()) if d]

    def version(call: Call) -> str:
        return "Client Version: v1.34.1\nKustomize Version: v5.7.1\n"

    def creator(kind: str) -> Callable[[Call], str]:
        """`kubectl create secret generic` or `create configmap`: one literal, kept in state."""
        def create(call: Call) -> str:
            connected()
            name, kept = call.args[0], state[f"{kind}s"]
            if name in kept:
                raise Refused(f'error: failed to create {kind} {kind}s "{name}" already exists')
            key, _, value = call.flag("--from-literal").partition("=")
            state[f"{kind}s"] = {**kept, name: {key: value}}
            return f"{kind}/{name} created\n"

        return create

    def rollout(call: Call) -> str:
        connected()
        verb, target = call.args
        if target != "deployment/gradio-chat" or "deployment.apps/gradio-chat" not in state["objects"]:
            raise Refused(f'Error from server (NotFound): deployments.apps "{target.partition("/")[2]}" not found')
        if verb == "restart":
            deploy(state)  # the new pod, with the ConfigMaps and Secrets as they are now
            return "deployment.apps/gradio-chat restarted\n"
        if verb == "status":
            return 'deployment "gradio-chat" successfully rolled out\n'
        raise Refused(f'error: unknown command "{verb}" for "kubectl rollout"')

    def apply(call: Call) -> str:
        connected()
        manifest = Path(call.flag("-f"))
        dry_run = subprocess.run(
            [os.environ["CLOUD_DOUBLES_REAL_KUBECTL"], "apply", "--dry-run=client", "--validate=false", "-f", str(manifest),
             f"--kubeconfig={os.environ['CLOUD_DOUBLES_KUBECONFIG']}"], capture_output=True, text=True)
        if dry_run.returncode:
            raise Refused(dry_run.stderr, dry_run.returncode)
        lines = []
        for name in objects(manifest):
            lines.append(f"{name} {'configured' if name in state['objects'] else 'created'}")
            state["objects"] = {**state["objects"], name: manifest.name}
        return "\n".join(lines) + "\n"

    def gemma_pod() -> dict:
        if "deployment.apps/vllm-gemma-deployment" not in state["objects"]:
            return {}
        polls = state["pod_polls"]
        state["pod_polls"] = polls + 1
        if polls < state["pending_polls"]:
            status = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                      "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."}]}
        else:
            ready = polls >= state["pending_polls"] + state["loading_polls"]
            status = {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"},
                                                         {"type": "Ready", "status": "True" if ready else "False"}]}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "vllm-gemma-deployment-7c9d8b6f5-x2k4q",
                "labels": {"app": "gemma-server"}}, "status": status}

    def get(call: Call) -> str:
        connected()
        kind = call.args[0]
        if kind == "pods":
            if call.flag("-l") != "app=gemma-server" or call.flag("-o") != "json":
                raise Refused("cloud_doubles: no recorded answer but for `get pods -l app=gemma-server -o json`")
            pod = gemma_pod()
            return json.dumps({"apiVersion": "v1", "kind": "List", "items": [pod] if pod else []}, indent=4) + "\n"
        if kind == "events":
            if state["pod_polls"] <= state["pending_polls"]:
                return ("LAST SEEN   TYPE      REASON              OBJECT                                      MESSAGE\n"
                        "2m10s       Warning   FailedScheduling    pod/vllm-gemma-deployment-7c9d8b6f5-x2k4q   0/2 nodes are available: 2 Insufficient nvidia.com/gpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod.\n"
                        "2m5s        Normal    TriggeredScaleUp    pod/vllm-gemma-deployment-7c9d8b6f5-x2k4q   pod triggered scale-up: [{https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-a/instanceGroups/gk3-gradio-chat-cluster-nap-1 0->1 (max: 1000)}]\n")
            return "No resources found in default namespace.\n"
        if kind == "secret":
            name = call.args[1] if len(call.args) > 1 else ""
            if call.flag("-o") != "name":
                raise Refused(f"cloud_doubles: no recorded answer for -o {call.flag('-o')}")
            if name in state["secrets"]:
                return f"secret/{name}\n"
            if call.flags.get("--ignore-not-found"):
                return ""
            raise Refused(f'Error from server (NotFound): secrets "{name}" not found')
        raise Refused(f'error: the server doesn\'t have a resource type "{kind}"')

    def delete(call: Call) -> str:
        connected()
        if call.args[:1] in (["secret"], ["configmap"]):
            kind, name = call.args
            kept = state["secrets" if kind == "secret" else "configmaps"]
            if name not in kept:
                return "" if call.flags.get("--ignore-not-found") else f'Error from server (NotFound): {kind}s "{name}" not found'
            state["secrets" if kind == "secret" else "configmaps"] = {k: v for k, v in kept.items() if k != name}
            return f'{kind} "{name}" deleted\n'
        manifest = Path(call.flag("-f"))
        lines = []
        for name in objects(manifest):
            if name in state["objects"]:
                state["objects"] = {k: v for k, v in state["objects"].items() if k != name}
                kind, _, short = name.partition("/")
                lines.append(f'{kind} "{short}" deleted')
        if manifest.name == "chat-deploy.yaml" and state["app"]:
            stop(state["app"]["pid"])
            state["app"] = None
        if manifest.name == "chat-gateway.yaml" and state["gateway"]:
            stop(state["gateway"])
            state["gateway"] = None
        return "".join(f"{line}\n" for line in lines)

    def exec_in_app(call: Call) -> str:
        """A `hybridchat` command in the app's container: its image's files, its environment."""
        connected()
        target, *argv = call.args
        if target != "deployment/gradio-chat" or not state["app"]:
            raise Refused(f'Error from server (NotFound): deployments.apps "{target.partition("/")[2]}" not found')
        if "--" not in call.argv:
            raise Refused("error: exec [POD] [COMMAND] is not supported anymore. Use exec [POD] -- [COMMAND] instead")
        if argv[0] != "hybridchat":
            raise Refused(f'OCI runtime exec failed: exec failed: unable to start container process: exec: "{argv[0]}": '
                          "executable file not found in $PATH: unknown\ncommand terminated with exit code 126", 126)
        done = subprocess.run([sys.executable, "-m", "hybridchat.cli", *argv[1:]], env={**os.environ, **state["app"]["env"]},
                              capture_output=True, text=True, timeout=300)
        if done.returncode:
            raise Refused(f"{done.stdout}{done.stderr}command terminated with exit code {done.returncode}", done.returncode)
        return done.stdout

    def port_forward(call: Call) -> str:
        connected()
        target, ports = call.args
        local, _, remote = ports.partition(":")
        if f"service/{target.partition('/')[2]}" not in state["objects"]:
            raise Refused(f'Error from server (NotFound): services "{target.partition("/")[2]}" not found')
        if state["pod_polls"] <= state["pending_polls"]:
            raise Refused("error: unable to forward port because pod is not running. Current status=Pending")
        state["forwards"] = state["forwards"] + [os.getpid()]
        state.save()
        print(f"Forwarding from 127.0.0.1:{local} -> {remote}\nForwarding from [::1]:{local} -> {remote}", flush=True)
        asyncio.run(_forward(int(local), state["gemma_url"]))
        return ""

    return {
        ("version",): Spec({"--client": False}, (0, 0), version),
        ("create", "secret", "generic"): Spec({"--from-literal": True}, (1, 1), creator("secret")),
        ("create", "configmap"): Spec({"--from-literal": True}, (1, 1), creator("configmap")),
        ("rollout",): Spec({"--timeout": True}, (2, 2), rollout),
        ("apply",): Spec({"-f": True}, (0, 0), apply),
        ("get",): Spec({"-l": True, "-o": True, "--field-selector": True, "--sort-by": True, "--ignore-not-found": False}, (1, 2), get),
        ("delete",): Spec({"-f": True, "--ignore-not-found": False}, (0, 2), delete),
        ("port-forward",): Spec({}, (2, 2), port_forward),
        ("exec",): Spec({}, (2, None), exec_in_app),
    }


async def _forward(port: int, target_url: str) -> None:
    """Forward TCP from 127.0.0.1:``port`` to the host and port of ``target_url``, until stopped."""
    host, target_port = target_url.split("//")[1].split(":")

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(target_port))
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = await asyncio.start_server(connection, "127.0.0.1", port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()

