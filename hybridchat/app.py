"""The Gradio chat app as ASGI: ``create_app(settings)`` returns a FastAPI app (the chat page,
``hybridchat.chat_ui.ChatUI``, mounted at ``/``; ``/healthz`` for Kubernetes probes) behind the
guard (``hybridchat.guard``); ``hybridchat app`` serves it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import gradio as gr
from fastapi import FastAPI

from hybridchat.auto import auto_route
from hybridchat.backends import ChatBackend, LearnerBackend, build_backends
from hybridchat.chat import ChatService
from hybridchat.chat_export import SAVE_THE_DOWNLOAD
from hybridchat.chat_ui import ChatUI
from hybridchat.chat_view import FOCUS_THE_BOX_WHEN_OPEN
from hybridchat.config import Settings
from hybridchat.costs import Pricing
from hybridchat.errors import HybridChatError
from hybridchat.guard import HEALTH_PATH, Guard
from hybridchat.iap import IapVerifier
from hybridchat.limits import Limits
from hybridchat.login import WAIT_NOTE, Logins, LoginThrottle
from hybridchat.store import HistoryStore, open_store
from hybridchat.visitors import VisitorIds, session_secret

log = logging.getLogger(__name__)

_CSS = "footer {display: none !important}"


def create_app(
    settings: Settings | None = None,
    *,
    backends: dict[str, ChatBackend] | None = None,
    store: HistoryStore | None = None,
    auth: list[tuple[str, str]] | None = None,
    root_path: str | None = None,
) -> FastAPI:
    """The app as ASGI: the chat UI at ``/`` and ``/healthz`` for probes.

    ``backends`` and ``store`` replace the ones ``settings`` describe."""
    settings = settings or Settings()
    visitor_ids = VisitorIds(session_secret(settings))  # first: a missing secret stops it early
    sign_in = None
    if settings.identity == "iap":
        if auth:
            raise HybridChatError(
                "Both a password list (HYBRIDCHAT_AUTH or --auth-file) and sign-in through IAP "
                "(HYBRIDCHAT_IDENTITY=iap) are set: they are two ways to say who a visitor is, choose one."
            )
        sign_in = IapVerifier(settings.iap_audience, settings.iap_keys_url)
    owned_store = None
    if store is None:
        store = owned_store = open_store(settings.resolved_store_url)
    models = backends or build_backends(settings)
    service = ChatService(
        models,
        store,
        max_message_bytes=settings.max_message_bytes,
        max_persona_bytes=settings.max_persona_bytes,
        stream=settings.stream,
        pricing=Pricing.from_settings(settings),
        auto=auto_route(models, max_waiting=settings.auto_max_waiting, recheck_seconds=settings.auto_recheck_seconds,
                        default=settings.auto if settings.auto is not None else settings.vllm_api_key is not None),
    )
    learner = next((b.code for b in service.backends.values() if isinstance(b, LearnerBackend)), None)
    demo = ChatUI(
        service,
        learner=learner,
        auth_enabled=bool(auth),
        sign_in=sign_in,
        visitor_ids=visitor_ids,
        limits=Limits(turns_per_minute=settings.turns_per_minute, streams_per_client=settings.streams_per_client,
                      newcomer_turns_per_minute=settings.newcomer_turns_per_minute),
        stream_interval=settings.stream_interval,
        same_model=settings.mode == "local" and not backends,
    ).demo
    # Each streaming chat holds a worker thread; Gradio's pool (and its queue's slots) default
    # to 40, below the concurrency asked for, and only launch() can raise it: set it here.
    demo.max_threads = max(40, 2 * settings.concurrency)
    demo.queue(default_concurrency_limit=settings.concurrency)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if owned_store is not None:
            owned_store.close()  # a last try to save turns still waiting for the database

    app = FastAPI(lifespan=lifespan)

    @app.get(HEALTH_PATH)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # show_error=False: an unexpected exception shows "Error", not its text (gr.Error and
    # gr.Warning, worded for visitors, still show); the traceback goes to the log.
    # run_history=False: Gradio would keep every message and reply in the browser's storage.
    mounted: FastAPI = gr.mount_gradio_app(
        app, demo, path="/", auth=Logins(auth) if auth else None, auth_message=WAIT_NOTE if auth else None,
        root_path=root_path, css=_CSS, head=FOCUS_THE_BOX_WHEN_OPEN + SAVE_THE_DOWNLOAD, show_error=False,
        run_history=False,
    )
    if auth:
        mounted.add_middleware(LoginThrottle)
    mounted.add_middleware(Guard, max_body_bytes=settings.max_request_bytes, sign_in=sign_in)
    return mounted
