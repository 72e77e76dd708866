"""The page's side by side: two columns under the chat, each reply streaming under its model's
name (or "Model A" and "Model B", blind, until the pick) with "Continue with …" under it.

``PairView`` places the components and says what they show; ``ChatUI`` wires them.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio.blocks import Block

from hybridchat.backends import ChatBackend
from hybridchat.backends.base import short_label
from hybridchat.chat import Conversation, Progress
from hybridchat.chat_view import reply_body
from hybridchat.sanitize import safe_markdown
from hybridchat.side_by_side import SIDE_BY_SIDE, PairProgress, open_pair

Updates = dict[Block, Any]
BLIND_NAMES = ("Model A", "Model B")
SAME_MODEL_NOTE = (
    "ℹ️ In local mode both stand-ins are the same small model: the figures and votes work here, and the quality "
    "comparison needs gcp mode or a room's Gemma."
)
CHOSE_LEFT = "You sent before picking, so the chat goes on with the left reply ({label}); no pick was counted."


def default_pair(backends: dict[str, ChatBackend]) -> tuple[str, str]:
    """Gemma and Gemini where both are offered, else the first two entries."""
    names = list(backends)
    return ("gemma", "gemini") if {"gemma", "gemini"} <= set(names) else (names[0], names[1])


def side_by_side_choice(backends: dict[str, ChatBackend]) -> list[tuple[str, str]]:
    """The selector's side-by-side entry, where there are two models to compare."""
    if len(backends) < 2:
        return []
    left, right = (short_label(backends[name].label) for name in default_pair(backends))
    return [(f"{left} and {right}, side by side", SIDE_BY_SIDE)]


class PairView:
    def __init__(self, backends: dict[str, ChatBackend], *, same_model: bool):
        self.backends = backends
        self.same_model = same_model

    def render_columns(self) -> None:
        with gr.Row(visible=False, elem_id="pair") as self.row:
            self.columns, self.buttons = [], []
            for column in (0, 1):
                with gr.Column(elem_id=f"pair-{column}"):
                    self.columns.append(gr.Markdown(elem_id=f"pair-reply-{column}"))
                    self.buttons.append(gr.Button("Continue", size="sm", elem_id=f"pick-{column}"))
        self.note = gr.Markdown(SAME_MODEL_NOTE, visible=False, elem_id="pair-note")

    def render_settings(self) -> None:
        if len(self.backends) < 2:
            self.setup = gr.State(None)
            return
        entries = [(backend.label, name) for name, backend in self.backends.items()]
        left, right = default_pair(self.backends)
        with gr.Row():
            self.left = gr.Dropdown(label="Side by side: left", choices=entries, value=left, elem_id="pair-left")
            self.right = gr.Dropdown(label="Side by side: right", choices=entries, value=right, elem_id="pair-right")
        self.blind = gr.Checkbox(label="Blind: hide the models' names until the pick", value=False, elem_id="blind")
        self.setup = gr.State({"left": left, "right": right, "blind": False})
        for control in (self.left, self.right, self.blind):
            control.change(lambda left, right, blind: {"left": left, "right": right, "blind": blind},
                           [self.left, self.right, self.blind], self.setup, api_visibility="private")

    @property
    def outputs(self) -> list[Block]:
        return [self.row, *self.columns, *self.buttons, self.note]

    def shown(self, conversation: Conversation | None, setup: dict[str, Any] | None,
              progress: PairProgress | None = None) -> Updates:
        """The columns as the newest pair stands: streaming (``progress``), open for a pick, or hidden."""
        blind = bool(setup and setup.get("blind"))
        if progress is not None:
            names = (setup or {}).get("left"), (setup or {}).get("right")
            cells = [self._cell(column, names[column], part, refused, blind, pickable=False)
                     for column, (part, refused) in enumerate(zip(progress.columns, progress.refused, strict=True))]
        else:
            members = open_pair(conversation) if conversation is not None else []
            if not members:
                return {self.row: gr.Row(visible=False), self.note: gr.Markdown(visible=False)}
            cells = [self._cell(t.pair_column or 0, t.model, None, None, blind, turn=t) for t in members]
            if len(cells) == 1:  # the other was refused before it began
                cells.append(("", gr.Button(visible=False)))
        updates: Updates = {self.row: gr.Row(visible=True), self.note: gr.Markdown(visible=self.same_model)}
        for column, (text, button) in enumerate(cells):
            updates[self.columns[column]] = text
            updates[self.buttons[column]] = button
        return updates

    def _cell(self, column: int, name: str | None, part: Progress | None, refused: str | None, blind: bool,
              *, pickable: bool = True, turn: Any = None) -> tuple[str, Any]:
        backend = self.backends.get(name or "")
        label = BLIND_NAMES[column] if blind else (
            (turn.model_label if turn is not None else None) or (part.label if part else None)
            or (backend.label if backend else name or ""))
        head = f"**{safe_markdown(label)}**"
        if refused:
            return f"{head}\n\n⚠️ {safe_markdown(refused)}", gr.Button(visible=False)
        if turn is None:
            reply = (part.turn.reply if part and part.turn else part.reply if part else "") or "…"
            return f"{head}\n\n{safe_markdown(reply)}", gr.Button(f"Continue with {label}", visible=pickable)
        return f"{head}\n\n{reply_body(turn)}", gr.Button(f"Continue with {label}", visible=True)

    def label_of(self, turn: Any, setup: dict[str, Any] | None) -> str:
        """How the page names a reply of the pair (blind: by its column)."""
        if setup and setup.get("blind"):
            return BLIND_NAMES[turn.pair_column or 0]
        backend = self.backends.get(turn.model)
        return turn.model_label or (backend.label if backend else turn.model)

    def choice(self, conversation: Conversation | None, column: int) -> str | None:
        """The turn id in ``column`` of the open pair, if there is one."""
        members = open_pair(conversation) if conversation is not None else []
        return next((t.turn_id for t in members if t.pair_column == column), None)
