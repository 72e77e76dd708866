"""Self-hosted Gemma served by vLLM, as a chat backend (its client: ``vllm_client``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import closing
from functools import lru_cache

from hybridchat.backends.base import (
    BackendHealth,
    ChatBackend,
    ContextWindow,
    Finish,
    GenerationParams,
    ReplyStream,
    Thought,
    estimate_tokens,
)
from hybridchat.backends.vllm_client import VllmClient
from hybridchat.config import Settings
from hybridchat.errors import shorten
from hybridchat.history import Message, gemma_prompt, openai_messages
from hybridchat.templates import TemplateName, template_for_model


class VllmBackend(ChatBackend):
    """Gemma on vLLM as a chat backend; its label names the model the server really serves."""

    def __init__(
        self, client: VllmClient, *, name: str = "gemma", label: str = "Gemma", template: TemplateName | None = None
    ):
        self.client = client
        self.name = name
        self.label = label
        self.chosen_template = template

    @property
    def template(self) -> TemplateName:
        """The raw prompt's template: as configured, else the one the served model's name implies."""
        return self.chosen_template or template_for_model(self.client.known_model).name

    @property
    def label(self) -> str:
        return _label(self._label, self.client.known_model)

    @label.setter
    def label(self, label: str) -> None:
        self._label = label

    def stream(self, messages: Sequence[Message], params: GenerationParams) -> ReplyStream:
        if self.client.api == "openai":
            return ReplyStream(self.client.stream_chat(openai_messages(messages, params.system_prompt), params))
        # /generate has no streaming: the whole reply comes as one piece.
        prompt = gemma_prompt(messages, params.system_prompt, self.template)

        def whole_reply() -> Iterator[str | Thought | Finish]:
            reply, finish, thought = self.client.complete_prompt(prompt, params)
            if thought:
                yield Thought(thought)
            yield reply
            if finish is not None:
                yield Finish(finish)

        return ReplyStream(whole_reply())

    def answer(self, messages: Sequence[Message], params: GenerationParams) -> ReplyStream:
        if self.client.api == "openai":
            return self.client.chat(openai_messages(messages, params.system_prompt), params)
        return self.stream(messages, params)  # /generate answers whole already

    def health(self) -> BackendHealth:
        return self.client.health()

    def context_window(self) -> ContextWindow | None:
        return self.client.context_window()

    def count_tokens(self, messages: Sequence[Message], params: GenerationParams) -> int:
        if self.client.api == "openai":
            counted = self.client.count_tokens(messages=openai_messages(messages, params.system_prompt))
        else:
            counted = self.client.count_tokens(prompt=gemma_prompt(messages, params.system_prompt, self.template))
        return counted if counted is not None else estimate_tokens(messages, params.system_prompt)


def call_gemma_model(
    prompt: str,
    temperature: float = 0.9,
    top_p: float = 0.95,
    max_tokens: int = 1024,
    *,
    client: VllmClient | None = None,
) -> str:
    """Send a raw prompt (from ``process_message_gemma``) to Gemma and return its reply.

    The codelab's function, on the configured protocol; reads ``Settings()`` when no
    ``client`` is given. Raises a ``BackendError`` whose text explains what went wrong.
    """
    params = GenerationParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    if client is not None:
        return client.complete_prompt(prompt, params)[0]
    with closing(VllmClient.from_settings(Settings())) as owned:
        return owned.complete_prompt(prompt, params)[0]


@lru_cache(maxsize=64)  # read for every streamed piece; the served name rarely changes
def _label(label: str, served: str | None) -> str:
    return f"{label} ({shorten(served, 80)})" if served else label
