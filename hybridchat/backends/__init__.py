"""Model backends behind one interface, and the registry that builds them from settings.

>>> backends = build_backends(Settings())          # doctest: +SKIP
>>> backends["gemini"].complete("Hi!", history=[])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path

from hybridchat.backends.base import (
    BackendHealth,
    ChatBackend,
    ContextWindow,
    Finish,
    GenerationParams,
    ReplyStream,
    RetryPolicy,
    Thought,
    Usage,
    estimate_tokens,
)
from hybridchat.backends.gemini import GeminiBackend, call_gemini_model, gemini_label
from hybridchat.backends.learner import HYBRIDCHAT, Family, LearnerBackend, LearnerCode
from hybridchat.backends.local import LocalBackend
from hybridchat.backends.vllm import VllmBackend, call_gemma_model
from hybridchat.backends.vllm_client import VllmClient
from hybridchat.config import Settings
from hybridchat.endpoints import Endpoints

log = logging.getLogger(__name__)

__all__ = [
    "BackendHealth",
    "ChatBackend",
    "ContextWindow",
    "Finish",
    "GeminiBackend",
    "GenerationParams",
    "LearnerBackend",
    "LearnerCode",
    "LocalBackend",
    "ReplyStream",
    "RetryPolicy",
    "Thought",
    "Usage",
    "VllmBackend",
    "VllmClient",
    "build_backends",
    "call_gemini_model",
    "call_gemma_model",
    "estimate_tokens",
    "gemini_label",
]


def build_backends(settings: Settings) -> dict[str, ChatBackend]:
    """The configured backends (``HYBRIDCHAT_BACKENDS``), keyed by name, in that order; with a
    learner's package (``HYBRIDCHAT_LEARNER_CODE``), first the learner's path for Gemma and
    Gemini (``my_gemma``, ``my_gemini``), then hybridchat's own.

    Nothing is contacted here: each backend connects on first use and reports problems
    through ``health()`` and its errors.
    """
    folder = Path(settings.learner_code) if settings.learner_code else None
    if folder is not None and not folder.is_dir():
        # The image built without a learner's package still names where one would be.
        log.warning("no learner's package at %s: hybridchat's own path only", folder)
        folder = None
    whose = f" · {HYBRIDCHAT}" if folder else ""
    backends: dict[str, ChatBackend] = {}
    for name in settings.backends:
        if name == "gemma":
            # The label names the model the server really serves, once it has said.
            backends[name] = VllmBackend(
                VllmClient.from_settings(settings), label=f"Gemma{whose}", template=settings.gemma_template
            )
        elif name == "gemini":
            where = "local stand-in" if settings.mode == "local" else (
                "Gemini API" if settings.google_api_key is not None else "Vertex AI"
            )
            backends[name] = GeminiBackend(
                settings=settings,
                model=settings.gemini_model,
                label=gemini_label(settings.gemini_model, where, whose),
                retry=RetryPolicy.from_settings(settings),
            )
        elif name == "local":
            backends[name] = LocalBackend.from_settings(settings)
    if settings.mode == "local":
        for backend in backends.values():  # the stand-ins too are the small local model
            backend.default_max_tokens = LocalBackend.default_max_tokens
    if folder is None:
        return backends
    return {**_learners(folder, backends, settings), **backends}


def _learners(folder: Path, backends: dict[str, ChatBackend], settings: Settings) -> dict[str, ChatBackend]:
    """The learner's path for each of Gemma and Gemini offered; their callers reach the models
    through the same clients as hybridchat's path (``hybridchat.endpoints``)."""
    gemma, gemini = backends.get("gemma"), backends.get("gemini")
    endpoints = Endpoints(
        gemma.client if isinstance(gemma, VllmBackend) else VllmClient.from_settings(settings),
        gemini if isinstance(gemini, GeminiBackend) else GeminiBackend(settings=settings, model=settings.gemini_model),
        settings.timeout,
    )
    code = LearnerCode(folder, timeout=settings.timeout)
    families: list[tuple[Family, ChatBackend | None]] = [("gemma", gemma), ("gemini", gemini)]
    return {
        f"my_{family}": LearnerBackend(code, backend, family=family, endpoints=endpoints)
        for family, backend in families if backend is not None
    }
