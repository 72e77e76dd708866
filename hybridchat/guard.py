"""What the app does before Gradio sees a request from the public internet.

``Guard`` is plain ASGI (it passes streamed responses through untouched):

* every response carries a Content-Security-Policy: the page may load scripts, styles, images,
  media and fonts from its own origin only (images also from ``data:``), and connect to its
  own origin only, so text a model was tricked into writing cannot make the visitor's browser
  fetch another site (``hybridchat.sanitize`` is the first wall, this the second);
* a request body over ``max_body_bytes`` is refused with 413 before anything reads it
  (declared by Content-Length, or counted as it streams in);
* file uploads are refused: the app has no file input, and Gradio's upload route would write
  whatever comes to disk;
* with sign-in through IAP (``sign_in``), a request without IAP's valid assertion is refused
  (403; ``/healthz`` excepted: the load balancer's health checks do not pass through IAP);
  the person it names is left in the request's state for the app.

Frames are allowed from anywhere: the workshop's notebook 05 shows the app in one.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from hybridchat.errors import SignInRefused
from hybridchat.iap import ASSERTION_HEADER, IapVerifier

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    # Gradio's page runs an inline bootstrap script and sets inline styles itself.
    "script-src 'self' 'unsafe-inline'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "media-src 'self' blob:",
    "font-src 'self' data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
])
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
UPLOAD_PATH = "/gradio_api/upload"
HEALTH_PATH = "/healthz"
SIGNED_IN = "signed_in"  # the request's SignedInUser, in its ASGI scope's state


class Guard:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, sign_in: IapVerifier | None = None):
        self.app = app
        self.sign_in = sign_in
        self.max_body_bytes = max_body_bytes
        self.too_large = (f"That is more than the app takes at once ({max_body_bytes // 1024:,} kB): "
                          "shorten the message, or send it in parts.")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        path = scope["path"].removeprefix(scope.get("root_path", ""))
        headers = dict(scope["headers"])
        if self.sign_in is not None and path != HEALTH_PATH:
            assertion = headers.get(ASSERTION_HEADER.encode(), b"").decode("latin-1")
            try:
                # In a thread: now and then it fetches IAP's keys, which must not stall every visitor.
                user = await anyio.to_thread.run_sync(self.sign_in.user, assertion)
            except SignInRefused as refused:
                await _refuse(send_with_headers, refused.status, str(refused))
                return
            scope.setdefault("state", {})[SIGNED_IN] = user  # the app's handlers read it (request.state)
        if path.rstrip("/").endswith(UPLOAD_PATH):
            await _refuse(send_with_headers, 403, "This app takes no files.")
            return
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await _refuse(send_with_headers, 413, self.too_large)  # shown by the page as it is
            return
        if declared is None and scope["method"] in ("POST", "PUT", "PATCH"):
            body = await _read_at_most(receive, self.max_body_bytes)
            if body is None:
                await _refuse(send_with_headers, 413, self.too_large)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send_with_headers)


async def _read_at_most(receive: Receive, limit: int) -> bytes | None:
    """The whole body of a request that does not declare its length, or ``None`` past ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)  # the client left: the app sees an empty body, then the disconnect
        size += len(message.get("body", b""))
        if size > limit:
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
