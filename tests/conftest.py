"""Shared fixtures: a tiny model built in-process, servers on 127.0.0.1, the Firestore emulator."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from fault_server import FaultServer, create_fault_app
from hybridchat.backends.local import LocalModel

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_model(directory: Path) -> Path:
    """A random 2-layer Llama with a byte-level BPE tokenizer and a ChatML template."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|im_start|>", "<|im_end|>", "<pad>"]
    bpe = ByteLevelBPETokenizer()
    corpus = ["The capital of France is Paris.", "Hello! How can I help you today?"] * 20
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<|im_end|>", pad_token="<pad>", bos_token="<|im_start|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = LlamaForCausalLM(config)
    # Replies run to max_tokens and decode cleanly: never a special token, nor a lone byte
    # that is not printable ASCII (the streamer would hold back half a UTF-8 character).
    model.generation_config.suppress_tokens = [
        token_id for token_id in range(len(tokenizer))
        if token_id in tokenizer.all_special_ids
        or not (text := tokenizer.decode([token_id])).isascii() or not text.isprintable()
    ]
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> LocalModel:
    return LocalModel.load(str(tiny_model_dir))


class ServerThread:
    """An ASGI app served by uvicorn on 127.0.0.1 in a thread, on a free port."""

    def __init__(self, app: object):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def stand_in(tiny_model: LocalModel) -> Iterator[str]:
    """``hybridchat serve-local``'s app over the tiny model; yields its base URL."""
    from hybridchat.serve_local import create_app

    with ServerThread(create_app(tiny_model)) as url:
        yield url


@pytest.fixture(scope="session")
def _fault_server() -> Iterator[FaultServer]:
    control = FaultServer()
    with ServerThread(create_fault_app(control)) as url:
        control.url = url
        yield control


@pytest.fixture
def fault_server(_fault_server: FaultServer) -> FaultServer:
    """A server that misbehaves as told (``fault_server.mode = "loading"`` …); reset per test."""
    _fault_server.reset()
    return _fault_server


@pytest.fixture
def closed_port_url() -> str:
    """A loopback address where nothing listens (connection refused)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- Firestore emulator ---------------------------------------------------------------------

EMULATOR_PROJECT = "hybridchat-test"


def _emulator_jar() -> Path:
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        pytest.fail("gcloud is not installed: the Firestore emulator ships with the Google Cloud CLI")
    root = subprocess.run(
        [gcloud, "info", "--format=value(installation.sdk_root)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    jar = Path(root) / "platform" / "cloud-firestore-emulator" / "cloud-firestore-emulator.jar"
    if not jar.is_file():
        pytest.fail(f"Firestore emulator jar not found at {jar}: install google-cloud-cli-firestore-emulator")
    if shutil.which("java") is None:
        pytest.fail("java is not installed: the Firestore emulator needs Java 17")
    return jar


class FirestoreEmulator:
    """The official emulator as a java process we own, on a fixed loopback port."""

    def __init__(self, jar: Path, port: int):
        self.jar, self.port = jar, port
        self.host = f"127.0.0.1:{port}"
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["java", "-cp", str(self.jar), "com.google.cloud.datastore.emulator.firestore.CloudFirestore",
             "start", f"--host=127.0.0.1", f"--port={self.port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + 60
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if "Dev App Server is now running" in line:
                # Keep draining its output so the pipe never fills and blocks it.
                threading.Thread(target=self.process.stdout.read, daemon=True).start()
                self._wait_until_answering(deadline)
                return
            if time.monotonic() > deadline:
                break
        self.stop()
        pytest.fail("the Firestore emulator did not start")

    def _wait_until_answering(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{self.host}/", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail("the Firestore emulator started but does not answer")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def reset(self, database: str = "chat-app-db") -> None:
        httpx.delete(
            f"http://{self.host}/emulator/v1/projects/{EMULATOR_PROJECT}/databases/{database}/documents"
        ).raise_for_status()


@pytest.fixture(scope="session")
def firestore_emulator() -> Iterator[FirestoreEmulator]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    emulator = FirestoreEmulator(_emulator_jar(), port)
    emulator.start()
    previous = os.environ.get("FIRESTORE_EMULATOR_HOST")
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    try:
        yield emulator
    finally:
        emulator.stop()
        if previous is None:
            os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
        else:
            os.environ["FIRESTORE_EMULATOR_HOST"] = previous
