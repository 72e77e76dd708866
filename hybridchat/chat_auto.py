"""Auto on the chat page: its entry in the model selector (first where it is the default), and
"Ask Gemini instead" under a Gemma reply that was broken off. ``ChatUI`` wires them."""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio.blocks import Block

from hybridchat.auto import AUTO, AutoRoute, offers_fallback
from hybridchat.backends.base import short_label
from hybridchat.chat import Conversation

Updates = dict[Block, Any]


def with_auto(choices: list[tuple[str, str]], auto: AutoRoute | None) -> list[tuple[str, str]]:
    """The selector's entries with Auto's: first where it is the default, else last."""
    if auto is None:
        return choices
    entry = (auto.label, AUTO)
    return [entry, *choices] if auto.default else [*choices, entry]


class AutoView:
    def __init__(self, auto: AutoRoute | None):
        self.auto = auto

    def render(self) -> None:
        name = short_label(self.auto.fallback.label) if self.auto else ""
        self.ask_fallback = gr.Button(f"Ask {name} instead", size="sm", visible=False, elem_id="ask-fallback")

    def shown(self, conversation: Conversation | None) -> Updates:
        """The button, shown while the chat ends on a Gemma reply Auto's turn had broken off."""
        return {self.ask_fallback: gr.Button(visible=offers_fallback(self.auto, conversation))}
