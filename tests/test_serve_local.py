"""The stand-in, `hybridchat serve-local`: its command, and its wire checked with the official OpenAI SDK, a second real client of its formats."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import httpx
import openai
import pytest
from conftest import wait_for

from hybridchat.history import process_message_gemma
from hybridchat.lab.local import free_port
from hybridchat.serve_local import STAND_IN_PREFIX, _conversation_of


@pytest.fixture
def sdk(stand_in) -> openai.OpenAI:
    client = openai.OpenAI(base_url=f"{stand_in}/v1", api_key="unused", max_retries=0)
    yield client
    client.close()


def test_chat_whole_and_streamed_agree_and_report_usage(sdk):
    model = sdk.models.list().data[0].id
    assert model.startswith(STAND_IN_PREFIX)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    whole = sdk.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=8)
    # The tiny model never ends a reply by itself: it runs to max_tokens.
    assert whole.model == model and whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens > 0
    chunks = list(sdk.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=8, stream=True,
        stream_options={"include_usage": True},
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_completions_whole_and_streamed_agree(sdk):
    model = sdk.models.list().data[0].id
    whole = sdk.completions.create(model=model, prompt="Once upon a time", temperature=0, max_tokens=8)
    streamed = sdk.completions.create(model=model, prompt="Once upon a time", temperature=0, max_tokens=8, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == whole.choices[0].text != ""


def test_bad_requests_get_a_400_in_the_protocols_own_shape(stand_in):
    refused = httpx.post(f"{stand_in}/v1/chat/completions", json={"messages": [], "temperature": 5})
    assert refused.status_code == 400
    assert "temperature" in refused.json()["error"]["message"]
    gemini = httpx.post(f"{stand_in}/v1/models/gemini-2.5-flash:generateContent", json={"contents": "nope"})
    assert gemini.status_code == 400 and gemini.json()["error"]["status"] == "INVALID_ARGUMENT"
    unknown = httpx.post(f"{stand_in}/v1/models/gemini-2.5-flash:embedContent", json={"contents": []})
    assert unknown.status_code == 404


def test_vllms_own_refusals_in_vllms_own_words(sdk, tiny_model):
    """A prompt over the context, max_tokens over it, an unknown model: what vLLM 0.32 answers."""
    model = sdk.models.list().data[0]
    limit = tiny_model.context_length
    assert model.max_model_len == limit
    with pytest.raises(openai.BadRequestError) as too_long:
        sdk.chat.completions.create(model=model.id, messages=[{"role": "user", "content": "Paris " * limit}])
    assert too_long.value.body["message"].startswith(f"This model's maximum context length is {limit} tokens.")
    assert too_long.value.body["param"] == "input_tokens"
    with pytest.raises(openai.BadRequestError, match=f"max_tokens=4096 cannot be greater than max_model_len={limit}"):
        sdk.chat.completions.create(model=model.id, messages=[{"role": "user", "content": "Hi"}], max_tokens=4096)
    with pytest.raises(openai.NotFoundError, match=r"The model `google/gemma-3-12b-it` does not exist\."):
        sdk.chat.completions.create(model="google/gemma-3-12b-it", messages=[{"role": "user", "content": "Hi"}])


def test_tokenize_counts_what_the_chat_template_renders(stand_in, tiny_model):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    counted = httpx.post(f"{stand_in}/tokenize", json={"messages": messages}).json()
    assert counted["count"] == tiny_model.count_tokens(messages) == len(counted["tokens"])
    assert counted["max_model_len"] == tiny_model.context_length
    raw = httpx.post(f"{stand_in}/tokenize", json={"prompt": "Paris"}).json()
    assert raw["count"] < counted["count"], "a raw prompt gets no chat template"


def test_serve_local_command_listens_once_loaded_then_serves_and_stops_on_ctrl_c(tiny_model_dir):
    port = free_port()
    command = [sys.executable, "-m", "hybridchat.cli", "serve-local", "--port", str(port), "--model", str(tiny_model_dir)]
    env = {**os.environ, "HYBRIDCHAT_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def first_answer() -> int | None:
            with contextlib.suppress(httpx.TransportError):
                return httpx.get(f"{url}/health", timeout=2).status_code
            return None

        assert wait_for(first_answer, 120) == 200, "like vLLM, nothing listens until the model has loaded"
        models = httpx.get(f"{url}/v1/models").json()
        assert models["data"][0]["id"] == f"local-stand-in/{tiny_model_dir.name}"
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0
    assert f"Local stand-in for Gemma and Gemini: http://127.0.0.1:{port}" in output


@pytest.mark.parametrize(("template", "system"), [
    ("gemma", [{"role": "user", "content": "Be brief.\n\nHi"}]),  # no system role: it opens the first turn
    ("gemma4", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]),
    ("codelab", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]),
])
def test_the_stand_in_reads_a_raw_prompt_of_each_template_as_the_conversation(template, system):
    prompt = process_message_gemma("And Germany?", [["Hi", "Hello!"]], "Be brief.", template=template)
    assert _conversation_of(prompt) == [*system, {"role": "assistant", "content": "Hello!"},
                                        {"role": "user", "content": "And Germany?"}]

