"""The stand-in server checked with the official OpenAI SDK, a second real client of its wire format."""

from __future__ import annotations

import httpx
import openai
import pytest

from hybridchat.serve_local import STAND_IN_PREFIX


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
    assert whole.model == model and whole.choices[0].finish_reason == "stop"
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
    unknown = httpx.post(f"{stand_in}/v1/models/gemini-2.5-flash:countTokens", json={"contents": []})
    assert unknown.status_code == 404


def test_answers_503_until_the_model_has_loaded(tiny_model):
    import threading

    from fastapi.testclient import TestClient

    from hybridchat.serve_local import create_app

    release = threading.Event()

    def slow_loader():
        release.wait(10)
        return tiny_model

    with TestClient(create_app(slow_loader)) as client:
        loading = client.get("/health")
        assert loading.status_code == 503 and "still loading" in loading.json()["error"]["message"]
        assert client.post("/v1/models/gemini-2.5-flash:generateContent", json={"contents": []}).json()["error"]["status"] == "UNAVAILABLE"
        release.set()
        for _ in range(100):
            if client.get("/health").status_code == 200:
                break
            threading.Event().wait(0.05)
        assert client.get("/health").status_code == 200
