"""Shared fixtures and helpers: a tiny model built in-process, servers on 127.0.0.1 (the
stand-in, the fault server, the app), the Firestore emulator, the cloud doubles, the notebook
kernels' environment, real SDK clients pointed at them, a recording backend and ``wait_for``."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import cloud_doubles
import fake_google
import google.oauth2.credentials
import kube_api
import pytest
from fault_server import FaultServer, create_fault_app
from google import genai
from google.genai import types
from notebook_runs import FAKE_SECRETS

from bench.firestore_emulator import EmulatorMissing, FirestoreEmulator
from hybridchat.backends import ChatBackend
from hybridchat.backends.local import LocalModel
from hybridchat.lab import gcp
from hybridchat.lab.local import BackgroundServer, free_port

T = TypeVar("T")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session", autouse=True)
def _local_session_secret(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The app's local session secret in a temporary folder, not the tester's home."""
    path = tmp_path_factory.mktemp("secret") / "session_secret"
    os.environ["HYBRIDCHAT_SECRET_FILE"] = str(path)
    yield
    os.environ.pop("HYBRIDCHAT_SECRET_FILE", None)


def never_generated(tokenizer: Any) -> list[int]:
    """The tokens a tiny random model is kept from writing, so that its replies run to max_tokens
    and decode cleanly: the special ones, and lone bytes that are not printable ASCII (the
    streamer would hold back half a UTF-8 character)."""
    return [
        token_id for token_id in range(len(tokenizer))
        if token_id in tokenizer.all_special_ids
        or not (text := tokenizer.decode([token_id])).isascii() or not text.isprintable()
    ]


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
    model.generation_config.suppress_tokens = never_generated(tokenizer)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> LocalModel:
    return LocalModel.load(str(tiny_model_dir))


@pytest.fixture(scope="session")
def stand_in(tiny_model: LocalModel) -> Iterator[str]:
    """``hybridchat serve-local``'s app over the tiny model; yields its base URL."""
    from hybridchat.serve_local import create_app

    with BackgroundServer(create_app(tiny_model)) as url:
        yield url


@pytest.fixture(scope="session")
def legacy_stand_in(tiny_model: LocalModel) -> Iterator[str]:
    """``hybridchat serve-local --legacy``: also the Model Garden container's ``/generate``."""
    from hybridchat.serve_local import create_app

    with BackgroundServer(create_app(tiny_model, legacy=True)) as url:
        yield url


@pytest.fixture(scope="session")
def _fault_server() -> Iterator[FaultServer]:
    control = FaultServer()
    with BackgroundServer(create_fault_app(control)) as url:
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
    return f"http://127.0.0.1:{free_port()}"


# --- Firestore emulator ---------------------------------------------------------------------

EMULATOR_PROJECT = "hybridchat-test"


@pytest.fixture
def firestore_emulator(_firestore_emulator: FirestoreEmulator) -> Iterator[FirestoreEmulator]:
    """The Firestore emulator, one for the session; after a test that restarted it on its data,
    started afresh, else each project the next tests open would begin with that data."""
    yield _firestore_emulator
    _firestore_emulator.unseed()


@pytest.fixture(scope="session")
def _firestore_emulator() -> Iterator[FirestoreEmulator]:
    try:
        emulator = FirestoreEmulator(project=EMULATOR_PROJECT)
    except EmulatorMissing as missing:
        pytest.fail(str(missing))  # never a silent skip: CI must run the Firestore tests
    with emulator:
        yield emulator


# --- gcp mode's cloud CLIs ----------------------------------------------------------------------

DOUBLES_PROJECT = "workshop-project"


@pytest.fixture
def doubles(tmp_path, monkeypatch):
    """The doubles first on PATH, in a fresh project; returns a function that starts them over
    from a given state (``initial_state`` overrides)."""
    with kube_api.fake_cluster(tmp_path) as kubeconfig, BackgroundServer(fake_google.create_app()) as hub:
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("HF_ENDPOINT", hub)

        def start(**state: object) -> None:
            cloud_doubles.install(tmp_path / "bin", tmp_path / "state", cloud_doubles.initial_state(DOUBLES_PROJECT, **state), kubeconfig)

        start()
        yield start
        cloud_doubles.stop_all(tmp_path / "state")


GCP_PROJECT = EMULATOR_PROJECT  # the Firestore emulator's project stands in for the learner's


@pytest.fixture
def cloud(lab_env, stand_in, firestore_emulator, tmp_path, monkeypatch):
    """gcp mode on this machine: the CLIs are doubles first on PATH (their state and command log
    in the folder this yields); Gemini is the stand-in reached in Vertex AI mode with
    application-default credentials; Firestore is the emulator.

    `kubectl port-forward service/gemma-service` leads to the stand-in too, not the real vLLM:
    notebook 04 teaches a raw completion in Gemma's chat template, which only Gemma (or the
    stand-in, which re-renders it) answers; SmolLM2 on vLLM answers it with "<end_of_turn>". The
    real engine runs the app's chat path, and notebook 04's package cell, in test_vllm_engine.py.
    """
    with kube_api.fake_cluster(tmp_path) as kubeconfig, BackgroundServer(fake_google.create_app()) as hub:
        credentials = fake_google.application_default_credentials(tmp_path)
        app_env = {
            "HYBRIDCHAT_MODE": "gcp", "HYBRIDCHAT_VLLM_URL": stand_in, "HYBRIDCHAT_GEMINI_URL": stand_in,
            "GOOGLE_CLOUD_PROJECT": GCP_PROJECT, "GOOGLE_APPLICATION_CREDENTIALS": str(credentials),
            "FIRESTORE_EMULATOR_HOST": firestore_emulator.host, "HYBRIDCHAT_STORE_URL": "firestore://chat-app-db",
            "HYBRIDCHAT_LOG_LEVEL": "WARNING",
        }
        state = cloud_doubles.initial_state(GCP_PROJECT, gemma_url=stand_in, app_env=app_env)
        cloud_doubles.install(tmp_path / "bin", tmp_path / "state", state, kubeconfig)
        # The notebooks' own settings: Gemma's URL is the in-cluster one, reached by port-forward.
        for name, value in app_env.items():
            if name not in ("HYBRIDCHAT_MODE", "HYBRIDCHAT_VLLM_URL"):
                monkeypatch.setenv(name, value)
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("HF_ENDPOINT", hub)
        monkeypatch.setenv("HYBRIDCHAT_LAB_POLL_SECONDS", "0.2")
        monkeypatch.delenv("GOOGLE_API_KEY", raising=False)  # Vertex AI with credentials, as on a real project
        # The OAuth client a learner makes in the console for IAP (notebook 05 asks for it).
        monkeypatch.setenv("IAP_CLIENT_ID", "123-workshop.apps.googleusercontent.com")
        staged = gcp.STAGED_LEARNER_CODE.exists()
        try:
            yield tmp_path / "state"
        finally:
            cloud_doubles.stop_all(tmp_path / "state")
            if not staged:  # notebook 05 staged the test's package in this checkout: not left behind
                shutil.rmtree(gcp.STAGED_LEARNER_CODE, ignore_errors=True)


# --- the notebooks' kernels --------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab_env(tiny_model_dir, tmp_path_factory):
    """Environment of the notebook kernels: the tiny model, free ports, a scratch store and lab folder."""
    lab = tmp_path_factory.mktemp("lab")
    env = {
        "HYBRIDCHAT_LAB_DIR": str(lab),
        "HYBRIDCHAT_LOCAL_PORT": str(free_port()),
        "HYBRIDCHAT_LOCAL_MODEL": str(tiny_model_dir),
        "HYBRIDCHAT_STORE_URL": f"sqlite:///{lab}/history.db",
        **FAKE_SECRETS,  # the stand-ins accept any key: these only have to stay out of every output
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield env
    from hybridchat.lab.local import stop_local_servers

    stop_local_servers()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# --- helpers ------------------------------------------------------------------------------------

def wait_for(condition: Callable[[], T], seconds: float = 30, *, every: float = 0.05) -> T:
    """``condition()``'s first truthy value, asked every ``every`` seconds; fails after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"gave up waiting after {seconds:g} s"
        time.sleep(every)
    return value


def api_key_client(url: str, **options: Any) -> genai.Client:
    """The real google-genai SDK with an API key, at a server on 127.0.0.1."""
    return genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=url, **options))


def vertex_client(url: str, **options: Any) -> genai.Client:
    """The real google-genai SDK in Vertex AI mode, at a server on 127.0.0.1."""
    return genai.Client(
        vertexai=True,
        project="test-project",
        location="global",
        credentials=google.oauth2.credentials.Credentials(token="test"),
        http_options=types.HttpOptions(base_url=url, **options),
    )


class Recording(ChatBackend):
    """A real backend that also notes the history and settings each turn was sent with."""

    def __init__(self, inner: ChatBackend):
        self.inner, self.name, self.label = inner, inner.name, inner.label
        self.histories: list[list] = []
        self.params: list = []

    def stream(self, messages, params):
        self.histories.append(list(messages[:-1]))
        self.params.append(params)
        return self.inner.stream(messages, params)

    def health(self):
        return self.inner.health()

    def context_window(self):
        return self.inner.context_window()

    def count_tokens(self, messages, params):
        return self.inner.count_tokens(messages, params)


class RunningApp(NamedTuple):
    url: str
    store_url: str


@contextmanager
def running_app(folder: Path, backends: dict[str, ChatBackend] | None = None, /, **settings: Any) -> Iterator[RunningApp]:
    """The chat app on 127.0.0.1 over a new SQLite history in ``folder``: what differs between
    tests is its ``backends`` (else those the settings configure) and its ``settings``. The
    backends come first, unnamed: ``backends=["gemma"]`` is the setting, the models to build."""
    from hybridchat.app import create_app
    from hybridchat.config import Settings

    store_url = f"sqlite:///{folder}/history.db"
    # The tests' many visitors all come from 127.0.0.1: as many people behind one address, whose
    # shared newcomers' share tests/test_hostile.py tests on its own.
    settings.setdefault("newcomer_turns_per_minute", 0)
    with BackgroundServer(create_app(Settings(store_url=store_url, **settings), backends=backends)) as url:
        yield RunningApp(url, store_url)


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, driven by Playwright (never a browser of Playwright's own)."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()
