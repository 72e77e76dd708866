"""Model backends behind one interface, and the registry that builds them from settings.

>>> backends = build_backends(Settings())          # doctest: +SKIP
>>> backends["gemini"].complete("Hi!", history=[])  # doctest: +SKIP
"""

from __future__ import annotations

from hybridchat.backends.base import (
    BackendHealth,
    ChatBackend,
    ContextWindow,
    Finish,
    GenerationParams,
    ReplyStream,
    RetryPolicy,
    Usage,
    estimate_tokens,
)
from hybridchat.backends.gemini import GeminiBackend, call_gemini_model, gemini_label
from hybridchat.backends.local import LocalBackend
from hybridchat.backends.vllm import VllmBackend, VllmClient, call_gemma_model
from hybridchat.config import Settings

__all__ = [
    "BackendHealth",
    "ChatBackend",
    "ContextWindow",
    "Finish",
    "GeminiBackend",
    "GenerationParams",
    "LocalBackend",
    "ReplyStream",
    "RetryPolicy",
    "Usage",
    "VllmBackend",
    "VllmClient",
    "build_backends",
    "call_gemini_model",
    "call_gemma_model",
    "estimate_tokens",
]


def build_backends(settings: Settings) -> dict[str, ChatBackend]:
    """The configured backends (``HYBRIDCHAT_BACKENDS``), keyed by name, in that order.

    Nothing is contacted here: each backend connects on first use and reports problems
    through ``health()`` and its errors.
    """
    backends: dict[str, ChatBackend] = {}
    for name in settings.backends:
        if name == "gemma":
            # The label names the model the server really serves, once it has said.
            backends[name] = VllmBackend(VllmClient.from_settings(settings), label="Gemma")
        elif name == "gemini":
            where = "local stand-in" if settings.mode == "local" else (
                "Gemini API" if settings.google_api_key is not None else "Vertex AI"
            )
            backends[name] = GeminiBackend(
                settings=settings,
                model=settings.gemini_model,
                label=gemini_label(settings.gemini_model, where),
                retry=RetryPolicy.from_settings(settings),
            )
        elif name == "local":
            backends[name] = LocalBackend.from_settings(settings)
    if settings.mode == "local":
        for backend in backends.values():  # the stand-ins too are the small local model
            backend.default_max_tokens = LocalBackend.default_max_tokens
    return backends
