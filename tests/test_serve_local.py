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
