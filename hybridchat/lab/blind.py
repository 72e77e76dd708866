"""Notebook 08's blind test, "is Gemma good enough for this?": each prompt goes to two models side
by side, through the app's own ``respond_pair``; the replies are shown as A and B, in an order
drawn at random for each prompt, with a button under each; a click is the app's ``pick``, saved
in the store as the page saves it. The names are revealed only in ``revealed()``, after the picks.

Each prompt is a chat of its own, so that no answer sees another prompt's.
"""

from __future__ import annotations

import html
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import ipywidgets as widgets
import pandas as pd

from hybridchat import comparison
from hybridchat.backends import GenerationParams
from hybridchat.chat import ChatService, Conversation
from hybridchat.errors import InputRefused
from hybridchat.side_by_side import pick, respond_pair
from hybridchat.store import Turn

LETTERS = ("A", "B")


@dataclass
class Duel:
    """One prompt's two replies, by column (A, B); ``failed`` says why a column has none."""

    prompt: str
    conversation: Conversation
    models: tuple[str, str]
    turns: list[Turn | None] = field(default_factory=lambda: [None, None])
    failed: list[str | None] = field(default_factory=lambda: [None, None])
    picked: int | None = None

    def can_pick(self, column: int) -> bool:
        """Both replies are there, and this one answered."""
        chosen = self.turns[column]
        return all(self.turns) and chosen is not None and chosen.status != "error" and self.picked is None


class BlindTest:
    """``ask`` the prompts, show ``widget()``, click; then ``revealed()`` and ``results()``."""

    def __init__(self, service: ChatService, models: tuple[str, str], *, owner: str = "visitor:notebook-08",
                 seed: int | None = None):
        self.service, self.models, self.owner = service, models, owner
        self.duels: list[Duel] = []
        self._draw = random.Random(seed)
        self._buttons: list[tuple[widgets.Button, widgets.Button]] = []
        self._count = widgets.Label()

    def ask(self, prompts: list[str], params: GenerationParams) -> None:
        """Each prompt to both models at once, the order on screen drawn at random."""
        from tqdm.auto import tqdm

        for prompt in tqdm(prompts, desc="Asking both models", unit=" prompts"):
            order = self.models if self._draw.random() < 0.5 else self.models[::-1]
            duel = Duel(prompt, Conversation(owner=self.owner), order)
            try:
                *_, done = respond_pair(self.service, duel.conversation, prompt, order, params)
            except InputRefused as refused:  # an empty or too long prompt: said, and skipped
                duel.failed = [str(refused)] * 2
            else:
                duel.turns = [column.turn if column else None for column in done.columns]
                duel.failed = list(done.refused)
            self.duels.append(duel)

    def widget(self) -> widgets.VBox:
        """Each prompt, its replies A and B side by side, and a button under each."""
        rows: list[widgets.Widget] = [self._count]
        self._buttons = []
        for index, duel in enumerate(self.duels):
            columns, buttons = [], []
            for column, letter in enumerate(LETTERS):
                turn, failed = duel.turns[column], duel.failed[column]
                text = (turn.reply or turn.error or "") if turn else (failed or "")
                button = widgets.Button(description=f"{letter} is better", disabled=not duel.can_pick(column))
                button.on_click(self._clicked(index, column))
                buttons.append(button)
                columns.append(widgets.VBox(
                    [widgets.HTML(f"<b>{letter}</b><div style='white-space:pre-wrap'>{html.escape(text)}</div>"),
                     button], layout=widgets.Layout(width="50%", padding="0 8px")))
            self._buttons.append((buttons[0], buttons[1]))
            rows += [widgets.HTML(f"<hr><b>{index + 1}. {html.escape(duel.prompt)}</b>"), widgets.HBox(columns)]
        self._counted()
        return widgets.VBox(rows)

    def pick(self, index: int, column: int) -> None:
        """``column``'s reply of prompt ``index`` is the better one: the app's pick, saved."""
        duel = self.duels[index]
        chosen = duel.turns[column]
        if chosen is None or not duel.can_pick(column):
            raise ValueError(f"prompt {index + 1} cannot take a pick of {LETTERS[column]}")
        pick(self.service, duel.conversation, chosen.turn_id)
        duel.picked = column
        if self._buttons:
            for shown, button in enumerate(self._buttons[index]):
                button.disabled = True
                button.description = f"{LETTERS[shown]}: picked ✓" if shown == column else f"{LETTERS[shown]}"
        self._counted()

    def pick_by(self, rule: Callable[[str, str], int]) -> None:
        """Click for every open prompt the button ``rule(reply_a, reply_b)`` names (0 or 1):
        a quick look, or a test, without clicking by hand."""
        for index, duel in enumerate(self.duels):
            a, b = duel.turns
            if a and b and duel.picked is None:
                column = rule(a.reply, b.reply)
                if not duel.can_pick(column):
                    continue
                if self._buttons:  # the button's own click: what a learner's click runs
                    self._buttons[index][column].click()
                else:
                    self.pick(index, column)

    def revealed(self) -> pd.DataFrame:
        """Per prompt: which model was A, which was B, and which was picked."""
        return pd.DataFrame([{
            "prompt": duel.prompt, "A": duel.models[0], "B": duel.models[1],
            "picked": duel.models[duel.picked] if duel.picked is not None else "(not picked)",
        } for duel in self.duels])

    def results(self) -> tuple[pd.DataFrame, pd.DataFrame, str]:
        """Read back from the store: per model (speed, cost), the win rates, and the verdict on
        ``models[0]`` against ``models[1]``."""
        store = self.service.store
        saved = comparison.turns_frame(
            turn for duel in self.duels if duel.conversation.session_id
            for turn in store.load(duel.conversation.session_id))
        rates = comparison.win_rates(comparison.duels(saved))
        return comparison.per_model(saved), rates, comparison.verdict(rates, *self.models)

    def _clicked(self, index: int, column: int) -> Callable[[widgets.Button], None]:
        return lambda _button: self.pick(index, column)

    def _counted(self) -> None:
        open_ = sum(duel.can_pick(0) or duel.can_pick(1) for duel in self.duels)
        done = sum(duel.picked is not None for duel in self.duels)
        self._count.value = f"{done} picked, {open_} to pick" + (" (then run the next cell)" if open_ else "")


# Rules for ``pick_by``: the shorter or the longer reply wins (a stand-in for a person's judgement).
BY_LENGTH: dict[str, Callable[[str, str], int]] = {
    "shorter": lambda a, b: int(len(b) < len(a)),
    "longer": lambda a, b: int(len(b) > len(a)),
}
