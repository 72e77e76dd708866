"""Where a learner's model callers find the models: the endpoints and clients the app uses.

The codelab's callers hard-code ``http://gemma-service:8000`` and build their own Vertex AI
client, which works only inside the cluster. A caller that asks here works unchanged in a
notebook (Gemma through the port-forward), in the app on a laptop (the local stand-in) and in
the app's pod (the in-cluster Service, Gemini through Workload Identity)::

    from hybridchat import endpoints

    requests.post(f"{endpoints.gemma_url()}/v1/completions", headers=endpoints.gemma_headers(),
                  json={"model": endpoints.gemma_model(), "prompt": prompt, ...}, timeout=endpoints.timeout())
    endpoints.gemini_client().models.generate_content(model=endpoints.gemini_model(), contents=contents, ...)

The app sets them around each call of a learner's function (``serving``), from its own
settings; a notebook sets them once (``use``); else they come from ``Settings()``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from hybridchat.config import Settings

if TYPE_CHECKING:  # the backends import this module: it imports them only when it makes clients
    from google import genai

    from hybridchat.backends.gemini import GeminiBackend
    from hybridchat.backends.vllm_client import VllmClient


@dataclass(frozen=True)
class Endpoints:
    """Gemma's vLLM server, Gemini's client, and how long the app waits for either."""

    gemma: VllmClient
    gemini: GeminiBackend
    timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Endpoints:
        from hybridchat.backends.gemini import GeminiBackend
        from hybridchat.backends.vllm_client import VllmClient

        gemini = GeminiBackend(settings=settings, model=settings.gemini_model)
        return cls(VllmClient.from_settings(settings), gemini, settings.timeout)


_serving: ContextVar[Endpoints | None] = ContextVar("hybridchat_endpoints", default=None)
_chosen: list[Endpoints] = []  # what a notebook chose with use(), at most one


def use(settings: Settings) -> Endpoints:
    """Point every caller in this process at the models ``settings`` reach (a notebook's choice)."""
    _chosen[:] = [Endpoints.from_settings(settings)]
    return _chosen[0]


@contextmanager
def serving(endpoints: Endpoints) -> Iterator[None]:
    """Within the block (and the threads started with its context), callers reach ``endpoints``."""
    token = _serving.set(endpoints)
    try:
        yield
    finally:
        _serving.reset(token)


def current() -> Endpoints:
    """The endpoints in force: the app's, else the notebook's, else the environment's."""
    return _serving.get() or (_chosen[0] if _chosen else _from_environment(tuple(sorted(os.environ.items()))))


@lru_cache(maxsize=4)  # made again only when the environment changes: each holds HTTP clients
def _from_environment(_environ: tuple[tuple[str, str], ...]) -> Endpoints:
    return Endpoints.from_settings(Settings())


def gemma_url() -> str:
    """Gemma's vLLM server, e.g. ``http://gemma-service:8000`` in the cluster (no trailing slash)."""
    return current().gemma.base_url


def gemma_headers() -> dict[str, str]:
    """Headers for a request to Gemma's server: its API key where it has one (a room's Gemma),
    else none; give them to ``requests.post(headers=...)``."""
    return current().gemma.auth_headers


def gemma_model() -> str:
    """The model name Gemma's server serves, as every request must name it (from ``/v1/models``)."""
    return current().gemma.served_model()


def gemini_client() -> genai.Client:
    """A ``google-genai`` client: Vertex AI, the Gemini API with a key, or the local stand-in."""
    return current().gemini.client


def gemini_model() -> str:
    """The Gemini model the app uses, e.g. ``gemini-2.5-flash``."""
    return current().gemini.model


def timeout() -> float:
    """Seconds the app waits for a model's answer: give it to ``requests.post(timeout=...)``."""
    return current().timeout
