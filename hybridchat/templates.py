"""Chat templates as data: how each model family writes a conversation as one raw prompt.

One record per template we ship. The translators (``hybridchat.history``), the stand-in's prompt
parser, the reply cleaner and the raw-completion stops all read these records; none of them
knows a template by name. Each record renders exactly what its model's published template
renders (``tests/test_templates.py`` holds them to the published Jinja templates, kept in
``tests/data/templates``, over generated conversations), except the ``<bos>`` the server adds.

* ``gemma``: Gemma 1 to 3 (``<start_of_turn>user … <end_of_turn>``); no system role, so a
  system prompt opens the first user turn; each message's text is trimmed.
* ``gemma4``: Gemma 4 (``<|turn>user … <turn|>``); a real system turn; a reply may open with a
  thought channel (``<|channel>thought … <channel|>``), which is never part of the answer.
* ``codelab``: the codelab's plain format (``User's Turn:\\n>>> …``), byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

TemplateName = Literal["gemma", "gemma4", "codelab"]
Role = Literal["system", "user", "assistant"]
_ZWSP = "\u200b"


@dataclass(frozen=True, slots=True)
class ChatTemplate:
    """How one chat template writes a conversation.

    ``turn`` is one message, with ``{role}`` (from ``roles``) and ``{text}``; ``system`` says
    where a system prompt goes: its own turn, the start of the first user turn, or a line before
    the turns; ``opener`` leaves the model's turn open for its reply. A raw completion ``stops``
    at the end of its turn; ``next_turn`` finds where a reply ran on into another turn.
    ``markers`` are the control texts a message must never carry as such.
    """

    name: TemplateName
    turn: str
    roles: Mapping[Role, str]
    system: Literal["own_turn", "first_user", "head"]
    opener: str
    stops: tuple[str, ...]
    markers: tuple[str, ...]
    trims: bool
    thought: tuple[str, str] | None = None

    @property
    def turn_start(self) -> str:
        """What opens every turn (``<start_of_turn>``, ``<|turn>``)."""
        return self.turn.partition("{role}")[0]

    @property
    def turn_end(self) -> str:
        """What closes every turn (``<end_of_turn>``, ``<turn|>``)."""
        return self.turn.partition("{text}")[2].removesuffix("\n")

    def role_of(self, name: str) -> Role | None:
        """The neutral role (user, assistant, system) of the template's role ``name``."""
        return next((role for role, written in self.roles.items() if written == name), None)


GEMMA = ChatTemplate(
    name="gemma",
    turn="<start_of_turn>{role}\n{text}<end_of_turn>\n",
    roles={"user": "user", "assistant": "model"},
    system="first_user",
    opener="<start_of_turn>model\n",
    stops=("<end_of_turn>",),
    markers=("<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>", "<unk>", "<mask>", "<start_of_image>",
             "<end_of_image>", "<image_soft_token>"),
    trims=True,
)
GEMMA4 = ChatTemplate(
    name="gemma4",
    turn="<|turn>{role}\n{text}<turn|>\n",
    roles={"user": "user", "assistant": "model", "system": "system"},
    system="own_turn",
    opener="<|turn>model\n",
    stops=("<turn|>",),
    markers=("<|turn>", "<turn|>", "<|channel>", "<channel|>", "<|think|>", "<|tool_call>", "<tool_call|>",
             "<|tool>", "<tool|>", "<|tool_response>", "<tool_response|>", "<|\"|>", "<|image|>", "<bos>", "<eos>"),
    trims=True,
    thought=("<|channel>", "<channel|>"),
)
CODELAB = ChatTemplate(
    name="codelab",
    turn="{role}'s Turn:\n>>> {text}\n",
    roles={"user": "User", "assistant": "Assistant"},
    system="head",
    opener="Assistant's Turn:\n>>> \n",
    stops=("User's Turn:",),
    markers=("User's Turn:", "Assistant's Turn:"),
    trims=False,
)
TEMPLATES: dict[TemplateName, ChatTemplate] = {t.name: t for t in (GEMMA, GEMMA4, CODELAB)}

# Special tokens of the usual shapes, of any template: <|x|> (ChatML's <|im_start|>, Llama 3's
# <|eot_id|>) and one pipe, <|x> or <x|> (Gemma 4's). A server's tokenizer reads these inside a
# chat message's text as the token itself.
_SPECIAL_TOKEN = re.compile(r"<(?=\|[A-Za-z0-9_\"]+\|?>|[A-Za-z0-9_]+\|>)")
_ANGLE_MARKERS = tuple(m for t in TEMPLATES.values() for m in t.markers if m.startswith("<"))
# The codelab's markers are plain words: they count only at the start of a line, in any case.
_LINE_MARKER = re.compile(
    "^(?=(?:" + "|".join(re.escape(m) for m in CODELAB.markers) + "))", re.IGNORECASE | re.MULTILINE
)
# Where a reply runs on into a turn of any template.
_NEXT_TURN = re.compile(
    "|".join(re.escape(m) for t in (GEMMA, GEMMA4) for m in (t.turn_start, t.turn_end))
    + "|" + "|".join(re.escape(m) for m in CODELAB.stops),
    re.IGNORECASE,
)


def template_named(name: str) -> ChatTemplate:
    try:
        return TEMPLATES[name]  # type: ignore[index]
    except KeyError:
        raise ValueError(f"template must be one of {', '.join(map(repr, TEMPLATES))}, not {name!r}") from None


def template_for_model(served_name: str | None) -> ChatTemplate:
    """The template a served model's name implies: Gemma 4's for a ``gemma-4-…`` name, else Gemma's
    (``medgemma-4b``, a Gemma 3, is not a Gemma 4)."""
    return GEMMA4 if served_name and re.search(r"gemma[-_]?4(?:[-_:]|$)", served_name, re.IGNORECASE) else GEMMA


def neutralize(text: str) -> str:
    """``text`` with every shipped template's markers broken by a zero-width space."""
    for marker in _ANGLE_MARKERS:
        if marker in text:
            text = text.replace(marker, f"<{_ZWSP}{marker[1:]}")
    text = _SPECIAL_TOKEN.sub(f"<{_ZWSP}", text)
    return _LINE_MARKER.sub(_ZWSP, text)


def render(template: ChatTemplate, system: str | None, turns: Sequence[tuple[Role, str]]) -> str:
    """``turns`` (role, text: alternating, a user's last, already neutralised) and a system
    prompt as ``template`` writes them, with the model's turn left open."""
    texts = [(role, text.strip() if template.trims else text) for role, text in turns]
    head = ""
    if system is not None:
        if template.system == "own_turn":
            head = template.turn.format(role=template.roles["system"], text=system.strip())
        elif template.system == "head":
            head = f"{system}\n"
        elif texts[0][0] == "user":  # no system role: the instruction opens the first user turn, untrimmed
            texts[0] = ("user", f"{system}\n\n{texts[0][1]}")
        else:  # a chat that opens with the model's greeting: the instruction is a user turn before it
            texts.insert(0, ("user", system))
    body = "".join(template.turn.format(role=template.roles[role], text=text) for role, text in texts)
    return head + body + template.opener


def parse(template: ChatTemplate, prompt: str) -> list[tuple[Role, str]]:
    """(role, text) pairs of a prompt ``render`` made; the open model turn is dropped."""
    if template.system == "head":
        return _parse_codelab(prompt)
    found: list[tuple[Role, str]] = []
    for chunk in prompt.split(template.turn_start)[1:]:
        name, _, rest = chunk.partition("\n")
        text, closed, _ = rest.partition(template.turn_end)
        role = template.role_of(name)
        if closed and role:
            found.append((role, text))
    return found


_CODELAB_TURN_SPLIT = re.compile(r"^(User|Assistant)'s Turn:\n>>> ", re.MULTILINE)


def _parse_codelab(prompt: str) -> list[tuple[Role, str]]:
    head, *pieces = _CODELAB_TURN_SPLIT.split(prompt)
    found: list[tuple[Role, str]] = [("system", head[:-1])] if head.endswith("\n") and head != "\n" else []
    for who, text in zip(pieces[0::2], pieces[1::2]):
        found.append((CODELAB.role_of(who) or "user", text[:-1]))
    if found and found[-1] == ("assistant", ""):
        found.pop()
    return found


def made_by(prompt: str) -> ChatTemplate | None:
    """Which shipped template rendered ``prompt``, if any."""
    for template in (GEMMA, GEMMA4):
        if prompt.startswith(template.turn_start) and prompt.endswith(template.opener):
            return template
    if prompt.endswith(CODELAB.opener) and _CODELAB_TURN_SPLIT.search(prompt):
        return CODELAB
    return None


def split_thought(reply: str) -> tuple[str, str]:
    """A raw reply's thought channel and its answer: ``("", reply)`` when it has none."""
    for template in TEMPLATES.values():
        if template.thought and template.thought[0] in reply:
            opener, closer = template.thought
            before, _, rest = reply.partition(opener)
            thought, closed, answer = rest.partition(closer)
            if not closed:  # cut off while thinking: no answer yet
                thought, answer = rest, ""
            return thought.removeprefix("thought\n").strip(), (before + answer)
    return "", reply


def cut_at_next_turn(text: str) -> str:
    """``text`` up to where it runs on into a turn of any template."""
    return _NEXT_TURN.split(text, maxsplit=1)[0]
