"""History translators: one neutral chat history, rendered for whichever model answers next.

The app keeps a single history and re-renders it every turn, so a conversation can switch
between Gemma and Gemini and keep its context (the codelab's "universal translator").

Rules shared by every translator:

* ``normalize_history`` accepts Gradio 6 messages (dicts or ``gr.ChatMessage``; content a
  string or a list of ``{"type": "text", "text": ...}`` blocks) and the codelab's older
  ``[user, assistant]`` pairs (either side may be ``None``), mixed freely.
* Roles ``system``, ``user`` and ``assistant`` are kept; ``model`` (Gemini's name) means
  ``assistant``. Any other role is a ``ValueError`` naming the item.
* Non-text parts (images, files, components) are skipped; a message left with no text, or
  with only whitespace, is dropped.
* Consecutive messages of one role are joined with a blank line: a failed turn leaves two
  user messages in a row, and Gemini and Gemma's chat template require alternation.
* System messages found in the history and the ``system_prompt`` argument are combined, in
  that order, into one system instruction.
* Text that contains a shipped template's markers (``hybridchat.templates``: Gemma's
  ``<start_of_turn>``, Gemma 4's ``<|turn>``, the codelab's ``User's Turn:``) or a special token
  of the usual shapes (``<|x|>``, ``<|x>``, ``<x|>``) is neutralised with a zero-width space, on
  every path (a server's tokenizer parses special-token text inside a chat message's content
  too), so it cannot forge a turn.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.genai import types

from hybridchat import templates
from hybridchat.protocols import legacy
from hybridchat.templates import Role, TemplateName, neutralize

_ROLE_ALIASES: dict[str, Role] = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "model": "assistant",
}


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message in the neutral history: ``Message(role="user", content="Hi")``."""

    role: Role
    content: str

    def __post_init__(self) -> None:
        if self.role not in ("system", "user", "assistant"):
            raise ValueError(f"role must be system, user or assistant, not {self.role!r}")
        if not isinstance(self.content, str):
            raise ValueError(f"content must be a string, not {type(self.content).__name__}")


def normalize_history(history: Iterable[Any] | None) -> list[Message]:
    """Return ``history`` as typed messages, whatever shape a learner's history has.

    >>> normalize_history([["Hi", "Hello!"], {"role": "user", "content": "Bye"}])
    [Message(role='user', content='Hi'), Message(role='assistant', content='Hello!'), \
Message(role='user', content='Bye')]
    """
    messages: list[Message] = []
    for index, item in enumerate(history or []):
        if isinstance(item, Message):
            candidates = [(item.role, item.content)]
        elif isinstance(item, (list, tuple)):
            candidates = _pair(index, item)
        else:
            candidates = [_role_and_content(index, item)]
        for role, content in candidates:
            text = _text_of(content)
            if text is not None and text.strip():
                messages.append(Message(_role(index, role), text))
    return _merge_consecutive(messages)


def process_message_gemma(
    message: Any,
    history: Iterable[Any] | None,
    system_prompt: str | None = None,
    template: TemplateName = "gemma",
) -> str:
    """Render history plus the new message as one raw prompt for a self-hosted Gemma.

    ``template="gemma"`` is the chat template of Gemma 1 to 3 (no ``<bos>``: the server adds it;
    ``"gemma4"`` is Gemma 4's, see ``hybridchat.templates``):

    >>> process_message_gemma("How are you?", [["Hi", "Hello!"]])
    '<start_of_turn>user\\nHi<end_of_turn>\\n<start_of_turn>model\\nHello!<end_of_turn>\\n\
<start_of_turn>user\\nHow are you?<end_of_turn>\\n<start_of_turn>model\\n'

    ``template="codelab"`` is the codelab's format, byte for byte:

    >>> process_message_gemma("Hi", [], template="codelab")
    "User's Turn:\\n>>> Hi\\nAssistant's Turn:\\n>>> \\n"
    """
    return gemma_prompt(conversation(message, history), system_prompt, template)


def gemma_prompt(
    messages: Sequence[Message], system_prompt: str | None = None, template: TemplateName = "gemma"
) -> str:
    """``process_message_gemma`` for typed messages (the new one last)."""
    chosen = templates.template_named(template)
    system, turns = _prepared(messages, system_prompt)
    return templates.render(chosen, system, [(turn.role, turn.content) for turn in turns])


def process_message_gemini(message: Any, history: Iterable[Any] | None) -> list[types.Content]:
    """Render history plus the new message as ``google-genai`` contents (roles user/model).

    System messages are left out: pass ``system_instruction(history, system_prompt)`` as
    ``GenerateContentConfig.system_instruction`` instead.

    >>> [c.role for c in process_message_gemini("Thanks", [["Hi", "Hello!"]])]
    ['user', 'model', 'user']
    """
    return gemini_contents(conversation(message, history))


def gemini_contents(messages: Sequence[Message]) -> list[types.Content]:
    """``process_message_gemini`` for typed messages (the new one last)."""
    _, turns = _prepared(messages, None)
    return [_content("user" if turn.role == "user" else "model", turn.content) for turn in turns]


# Validated once; each turn gets copies holding its text. The SDK's validators cost ~10 µs per
# object, and model_copy does not run them: a 1,000-turn history renders in ~8 ms, not ~26 ms.
_PART = types.Part(text="")
_CONTENTS = {role: types.Content(role=role, parts=[]) for role in ("user", "model")}


def _content(role: str, text: str) -> types.Content:
    return _CONTENTS[role].model_copy(update={"parts": [_PART.model_copy(update={"text": text})]})


def process_message_openai(
    message: Any, history: Iterable[Any] | None, system_prompt: str | None = None
) -> list[dict[str, str]]:
    """Render history plus the new message for an OpenAI-compatible chat API (vLLM).

    >>> process_message_openai("Hi", [], system_prompt="Be brief.")
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]
    """
    return openai_messages(conversation(message, history), system_prompt)


def openai_messages(messages: Sequence[Message], system_prompt: str | None = None) -> list[dict[str, str]]:
    """``process_message_openai`` for typed messages (the new one last)."""
    system, turns = _prepared(messages, system_prompt)
    head = [{"role": "system", "content": system}] if system is not None else []
    return head + [{"role": turn.role, "content": turn.content} for turn in turns]


def system_instruction(history: Iterable[Any] | None, system_prompt: str | None = None) -> str | None:
    """The combined system instruction of a history and an explicit system prompt, if any.

    >>> system_instruction([{"role": "system", "content": "Be kind."}], "Be brief.")
    'Be kind.\\n\\nBe brief.'
    """
    system, _ = _split_system(normalize_history(history), system_prompt)
    return system


def conversation(message: Any, history: Iterable[Any] | None = None) -> list[Message]:
    """A message and the history before it, in any shape ``normalize_history`` takes, as the
    typed messages every backend takes (the new one last).

    >>> conversation("How are you?", [["Hi", "Hello!"]])[-1]
    Message(role='user', content='How are you?')
    """
    return normalize_history([*(history or []), {"role": "user", "content": _text_of(message) or ""}])


def parse_gemma_prompt(prompt: str, template: TemplateName = "gemma") -> list[Message]:
    """Turn a prompt made by ``process_message_gemma`` back into messages.

    The open model turn at the end is dropped, and a system prompt comes back as part of
    the first user message (Gemma's template) or as a system message (Gemma 4's, the codelab's).
    Used by the local stand-in server to re-render a raw prompt with its own chat template.

    >>> parse_gemma_prompt(process_message_gemma("Hi", [["a", "b"]]))
    [Message(role='user', content='a'), Message(role='assistant', content='b'), \
Message(role='user', content='Hi')]
    """
    return [Message(role, text) for role, text in templates.parse(templates.template_named(template), prompt)]


def gemma_output(raw: str, prompt: str = "") -> tuple[str, str]:
    """A raw completion's thought (``""``: none) and its new reply.

    Strips an echoed prompt (plain, or the container's ``Prompt:\\n…\\nOutput:\\n…``), an
    ``Output:`` prefix, a thought channel (Gemma 4's, returned apart) and any turn the model went
    on to invent (the codelab's rules).

    >>> gemma_output("Prompt:\\nUser's Turn:\\n>>> Hi\\nAssistant's Turn:\\n>>> \\n"
    ...              "Output:\\n Hello! User's Turn: more", "User's Turn:\\n>>> Hi\\nAssistant's Turn:\\n>>> \\n")
    ('', 'Hello!')
    """
    wrapped = legacy.echoed(prompt, "")
    if prompt and raw.startswith(wrapped):
        text = raw[len(wrapped) :]
    elif prompt and raw.startswith(prompt):
        text = raw[len(prompt) :]
    else:
        text = raw
        for opener in (templates.GEMMA.opener, templates.GEMMA4.opener, "Assistant's Turn:\n>>>"):
            _, found, after = text.rpartition(opener)
            if found:
                text = after
                break
    thought, text = templates.split_thought(text)
    text = templates.cut_at_next_turn(text).lstrip()
    if text.lower().startswith("output:"):
        text = text[len("output:") :]
    return thought, text.strip()


def _prepared(messages: Sequence[Message], system_prompt: str | None) -> tuple[str | None, list[Message]]:
    """The system instruction and the turns to render: neutralised, alternating, a user's last
    (messages with no text are dropped, as ``normalize_history`` drops them)."""
    system, turns = _split_system([m for m in messages if m.content.strip()], system_prompt)
    turns = [Message(turn.role, neutralize(turn.content)) for turn in turns]
    if not turns or turns[-1].role != "user":
        # An empty new message still opens a user turn, so the model knows it is its turn.
        turns.append(Message("user", ""))
    return system, turns


def _split_system(messages: list[Message], system_prompt: str | None) -> tuple[str | None, list[Message]]:
    parts = [m.content for m in messages if m.role == "system"]
    if system_prompt and system_prompt.strip():
        parts.append(system_prompt)
    turns = _merge_consecutive([m for m in messages if m.role != "system"])
    return (neutralize("\n\n".join(parts)) if parts else None), turns


def _merge_consecutive(messages: list[Message]) -> list[Message]:
    merged: list[Message] = []
    for message in messages:
        if merged and merged[-1].role == message.role:
            merged[-1] = Message(message.role, f"{merged[-1].content}\n\n{message.content}")
        else:
            merged.append(message)
    return merged


def _pair(index: int, item: Sequence[Any]) -> list[tuple[Any, Any]]:
    if len(item) != 2:
        raise ValueError(f"history item {index}: a [user, assistant] pair has 2 entries, not {len(item)}")
    return [("user", item[0]), ("assistant", item[1])]


def _role_and_content(index: int, item: Any) -> tuple[Any, Any]:
    if isinstance(item, Mapping):
        if "role" not in item:
            raise ValueError(f"history item {index}: a message needs a 'role', got keys {sorted(item)}")
        return item["role"], item.get("content")
    if hasattr(item, "role") and hasattr(item, "content"):  # gr.ChatMessage and look-alikes
        return item.role, item.content
    raise ValueError(
        f"history item {index}: expected a message ({{'role', 'content'}}) or a "
        f"[user, assistant] pair, not {type(item).__name__}"
    )


def _role(index: int, role: Any) -> Role:
    try:
        return _ROLE_ALIASES[str(role).lower()]
    except KeyError:
        raise ValueError(
            f"history item {index}: unknown role {role!r} (expected system, user or assistant)"
        ) from None


def _text_of(content: Any) -> str | None:
    """Text of a content value; ``None`` when it holds no text (files, images, components)."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, Mapping):
        text = content.get("text")
        # A text block, or a multimodal textbox value: {"text": ..., "files": [...]}.
        if isinstance(text, str) and (content.get("type") == "text" or "files" in content):
            return text
        return None
    if isinstance(content, (list, tuple)):
        texts = [text for text in map(_text_of, content) if text is not None]
        return "\n".join(texts) if texts else None
    return None
