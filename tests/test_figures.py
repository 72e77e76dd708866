"""Each reply's figures: its tokens from the APIs' own usage (counted, and marked ≈, where a server
reports none), its cost from the price table, and the quiet line under it."""

from __future__ import annotations

import pytest
from conftest import api_key_client

from hybridchat.backends import GenerationParams, VllmBackend, VllmClient
from hybridchat.backends.gemini import GeminiBackend
from hybridchat.chat import ChatService, Conversation
from hybridchat.chat_view import figures, to_messages
from hybridchat.config import Settings
from hybridchat.costs import GEMINI_PRICES, GPU_PRICES, Pricing, shown
from hybridchat.history import conversation
from hybridchat.store import Turn, open_store


def test_gemini_is_priced_by_the_tables_input_and_output_tokens():
    pricing = Pricing.from_settings(Settings(gemini_model="gemini-2.5-flash"))
    per_input, per_output = GEMINI_PRICES["gemini-2.5-flash"]
    assert pricing.cost("gemini", 812, 96, 1.0) == pytest.approx((812 * per_input + 96 * per_output) / 1e6)
    assert pricing.cost("my_gemini", 1_000_000, 0, 9.0) == pytest.approx(per_input)  # the learner's path alike


def test_a_price_of_the_table_can_be_overridden_and_an_unknown_model_has_none():
    pricing = Pricing.from_settings(Settings(gemini_model="gemini-9", gemini_prices={"gemini-9": [1.0, 4.0]}))
    assert pricing.cost("gemini", 1_000_000, 1_000_000, 1.0) == pytest.approx(5.0)
    assert Pricing.from_settings(Settings(gemini_model="gemini-9")).cost("gemini", 10, 10, 1.0) is None


def test_gemma_is_its_gpus_hours_shared_by_the_room():
    hour = 3600.0
    two_l4s = Pricing.from_settings(Settings())
    assert two_l4s.cost("gemma", 800, 100, hour) == pytest.approx(2 * GPU_PRICES["nvidia-l4"])
    one_l4 = Pricing.from_settings(Settings(gemma_deployment="gemma-4-e4b", room_size=30))
    assert one_l4.cost("gemma", 800, 100, hour) == pytest.approx(GPU_PRICES["nvidia-l4"] / 30)
    assert Pricing.from_settings(Settings(gpu_prices={"nvidia-l4": 1.0})).cost("my_gemma", 1, 1, hour) == 2.0
    assert two_l4s.cost("local", 800, 100, hour) == 0.0


@pytest.mark.parametrize(("cost", "text"), [(0.0003, "$0.0003"), (0.00031, "$0.00031"), (0.0123, "$0.012"),
                                              (0.5, "$0.5"), (12.345, "$12.35"), (0.0, "$0")])
def test_a_cost_is_shown_in_dollars_without_an_exponent(cost, text):
    assert shown(cost) == text


def test_the_figures_line_reads_as_the_issue_shows_it():
    turn = Turn(user="Hi", model="gemini", reply="Hello", first_token_ms=400, latency_ms=2900, prompt_tokens=812,
                completion_tokens=96, cost_usd=0.0003)
    assert figures(turn) == "0.4 s · 38 tok/s · 812 → 96 tokens · $0.0003"
    counted = turn.model_copy(update={"model": "gemma", "tokens_estimated": True})
    assert figures(counted) == "0.4 s · 38 tok/s · ≈812 → ≈96 tokens · $0.0003 est."
    assert "<sub>0.4 s · 38 tok/s" in to_messages([turn])[-1]["content"]  # under the reply, small


@pytest.mark.parametrize("streamed", [True, False])
@pytest.mark.parametrize("model", ["gemma", "gemini"])
def test_the_apis_own_usage_is_saved_priced_and_shown(stand_in, tmp_path, model, streamed):
    # The real openai client (vLLM's usage; stream_options.include_usage when streaming) and the
    # real google-genai client (usage_metadata), against the stand-in.
    backends = {"gemma": VllmBackend(VllmClient(stand_in), label="Gemma"),
                "gemini": GeminiBackend(api_key_client(stand_in), label="Gemini")}
    pricing = Pricing.from_settings(Settings())
    service = ChatService(backends, open_store(f"sqlite:///{tmp_path}/h.db"), stream=streamed, pricing=pricing)
    chat = Conversation("visitor:alice")
    params = GenerationParams(max_tokens=12, temperature=0.1)
    *_, done = service.respond(chat, "What is the capital of France?", model, params)
    [saved] = service.store.load(chat.session_id)
    assert saved.model_dump(mode="json") == done.turn.model_dump(mode="json")  # as saved, so shown
    assert not saved.tokens_estimated
    assert saved.prompt_tokens == backends[model].count_tokens(conversation("What is the capital of France?"), params)
    assert 0 < saved.completion_tokens <= 12
    assert saved.cost_usd == pytest.approx(
        pricing.cost(model, saved.prompt_tokens, saved.completion_tokens, saved.latency_ms / 1000))
    assert f"{saved.prompt_tokens} → {saved.completion_tokens} tokens" in to_messages([saved])[-1]["content"]


def test_a_server_that_reports_no_usage_is_counted_with_the_models_tokenizer_and_marked(legacy_stand_in, tmp_path):
    gemma = VllmBackend(VllmClient(legacy_stand_in, api="legacy"), label="Gemma")  # the codelab's /generate: no usage
    service = ChatService({"gemma": gemma}, open_store(f"sqlite:///{tmp_path}/h.db"),
                          pricing=Pricing.from_settings(Settings()))
    chat = Conversation("visitor:alice")
    *_, done = service.respond(chat, "Hi", "gemma", GenerationParams(max_tokens=8, temperature=0.1))
    turn = done.turn
    assert turn.reply and turn.tokens_estimated
    assert turn.prompt_tokens == gemma.count_tokens(conversation("Hi"), GenerationParams(max_tokens=8))
    assert turn.completion_tokens >= 1 and "≈" in figures(turn)
