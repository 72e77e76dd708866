"""The template records render what the models' published chat templates render, whitespace
included, over generated conversations; the published templates (tests/data/templates, sources
in its README) are rendered as transformers renders them for vLLM."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from transformers.utils.chat_template_utils import render_jinja_template

from hybridchat.history import Message, gemma_prompt
from hybridchat.lab import check
from hybridchat.templates import GEMMA, GEMMA4, neutralize, split_thought, template_for_model

PUBLISHED = Path(__file__).parent / "data" / "templates"
GEMMA3_JINJA = (PUBLISHED / "gemma-3-it.jinja").read_text()
GEMMA4_JINJA = (PUBLISHED / "gemma-4-31B-it.jinja").read_text()
# What Gemma 4's 31B template adds to the model's turn with thinking off; the small models' (and ours) open it bare.
EMPTY_THOUGHT = "<|channel>thought\n<channel|>"

# Text with the whitespace `trim` removes (Unicode's too) around and inside, and markup that is not a marker.
texts = st.text(
    alphabet=st.sampled_from([*"ab Z9.,!?\n\t\r", "\x85", "\u2028", "\u00a0", "\u3000", "<", ">", "|", "é", "中"]),
    min_size=1, max_size=24,
).filter(lambda text: text.strip() != "" and neutralize(text) == text)


@st.composite
def conversations(draw) -> list[Message]:
    """A conversation a published template accepts: an optional system prompt, then user and
    model turns alternating, a user's last."""
    system = draw(st.one_of(st.none(), texts))
    pairs = draw(st.lists(st.tuples(texts, texts), max_size=4))
    messages = [Message("system", system)] if system is not None else []
    for user, model in pairs:
        messages += [Message("user", user), Message("assistant", model)]
    return [*messages, Message("user", draw(texts))]


def published(template: str, messages: list[Message], add_generation_prompt: bool = True) -> str:
    rendered, _ = render_jinja_template(
        conversations=[[{"role": m.role, "content": m.content} for m in messages]],
        chat_template=template, add_generation_prompt=add_generation_prompt, bos_token="",
    )
    return rendered[0]


@given(conversations())
def test_gemma_renders_what_gemma_3s_published_template_renders(messages):
    assert gemma_prompt(messages, template="gemma") == published(GEMMA3_JINJA, messages)


@given(conversations())
def test_gemma4_renders_what_gemma_4s_published_template_renders(messages):
    ours = gemma_prompt(messages, template="gemma4")
    assert ours.endswith(GEMMA4.opener)
    assert ours.removesuffix(GEMMA4.opener) == published(GEMMA4_JINJA, messages, add_generation_prompt=False)
    assert ours + EMPTY_THOUGHT == published(GEMMA4_JINJA, messages)


def test_a_persona_is_gemma_4s_system_turn_and_opens_gemma_3s_first_user_turn():
    messages = [Message("user", "Hi")]
    assert gemma_prompt(messages, " Be brief. ", template="gemma4").startswith("<|turn>system\nBe brief.<turn|>\n")
    assert gemma_prompt(messages, " Be brief. ", template="gemma").startswith("<start_of_turn>user\n Be brief. \n\nHi")
    greeted = [Message("assistant", "Hello! Ask me anything."), Message("user", "Hi")]
    assert gemma_prompt(greeted, "Be brief.", template="gemma").startswith(
        "<start_of_turn>user\nBe brief.<end_of_turn>\n<start_of_turn>model\nHello!"), "never inside the model's turn"


def test_notebook_03s_checker_accepts_a_translator_that_renders_gemma_3s_published_template(capsys):
    def process_message_gemma(message, history):  # a learner's translator: the published template itself
        return published(GEMMA3_JINJA, [*map(_message, history), Message("user", message)])

    check.gemma_translator(process_message_gemma)
    assert "✅ process_message_gemma renders Gemma's chat template exactly" in capsys.readouterr().out


def _message(item: dict[str, str]) -> Message:
    return Message(item["role"], item["content"])


@pytest.mark.parametrize(("raw", "thought", "answer"), [
    ("<|channel>thought\nThe user greets.<channel|>Hello!", "The user greets.", "Hello!"),
    ("Hello!", "", "Hello!"),
    ("<|channel>thought\nStill thinking", "Still thinking", ""),
])
def test_a_replys_thought_channel_is_split_from_its_answer(raw, thought, answer):
    assert split_thought(raw) == (thought, answer)


def test_every_marker_of_every_template_is_broken():
    for template in (GEMMA, GEMMA4):
        for marker in template.markers:
            assert marker not in neutralize(f"x{marker}y"), marker


@pytest.mark.parametrize(("served", "template"), [
    ("google/gemma-4-E4B-it", GEMMA4), ("google/gemma-4-26B-A4B-it", GEMMA4), ("my-gemma4", GEMMA4), ("gemma4:e4b", GEMMA4),
    ("google/gemma-3-12b-it", GEMMA), ("google/gemma-3-4b-it", GEMMA), ("google/medgemma-4b-it", GEMMA),
    ("local-stand-in/SmolLM2", GEMMA), (None, GEMMA),
])
def test_the_template_follows_the_served_models_name(served, template):
    assert template_for_model(served) is template

