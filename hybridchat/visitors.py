"""Anonymous visitors' ids: issued and signed by the server, never chosen by the browser.

A browser keeps ``"<id>.<signature>"`` (in ``gr.BrowserState``); the signature is an HMAC of
the id with the session secret, so a client can neither pick an id (``"v"``, or someone
else's) nor forge one. Only the server holds the secret:

* ``HYBRIDCHAT_SESSION_SECRET`` when set (required in gcp mode: every replica must sign alike,
  and a pod's disk does not outlive it);
* else, locally, a secret generated once and kept in ``HYBRIDCHAT_SECRET_FILE`` (readable by
  its owner only), so visitors keep their chats across restarts.

>>> ids = VisitorIds(b"not-a-real-secret")
>>> ids.verify(ids.token_for("abc"))
'abc'
>>> ids.verify("abc.forged") is None
True
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

from hybridchat.config import Settings
from hybridchat.errors import SecretMissing

_MAX_TOKEN = 200  # an issued token is 76 characters; anything much longer is not ours


class VisitorIds:
    def __init__(self, secret: bytes):
        self._key = hashlib.sha256(b"hybridchat visitor id\0" + secret).digest()

    @staticmethod
    def new_id() -> str:
        """A new visitor's id (random; its token is ``token_for(id)``)."""
        return secrets.token_hex(16)

    def token_for(self, visitor_id: str) -> str:
        """The token a browser keeps for ``visitor_id``."""
        return f"{visitor_id}.{self._signature(visitor_id)}"

    def verify(self, token: object) -> str | None:
        """The visitor id in ``token`` if the server issued it, else ``None``."""
        if not isinstance(token, str) or len(token) > _MAX_TOKEN:
            return None
        visitor_id, _, signature = token.rpartition(".")
        # As bytes: compare_digest refuses str with non-ASCII characters, which a client may send.
        sent = signature.encode("utf-8", "surrogatepass")
        if not visitor_id or not hmac.compare_digest(sent, self._signature(visitor_id).encode()):
            return None
        return visitor_id

    def browser_storage_key(self) -> str:
        """A key for Gradio's ``BrowserState`` encryption, stable as long as the secret is.
        Gradio sends it to every browser, so it is derived one way and protects nothing: the
        signature does."""
        return hmac.new(self._key, b"gradio BrowserState", hashlib.sha256).hexdigest()[:32]

    def _signature(self, visitor_id: str) -> str:
        mac = hmac.new(self._key, visitor_id.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def session_secret(settings: Settings) -> bytes:
    """The configured secret; locally, the one kept in ``settings.secret_file`` (made once)."""
    if settings.session_secret is not None:
        return settings.session_secret.get_secret_value().encode()
    if settings.mode == "gcp":
        raise SecretMissing(
            "HYBRIDCHAT_SESSION_SECRET is not set: in gcp mode it signs visitors' ids, the same on "
            "every replica. Create the gradio-chat-session Secret (notebook 05 does) and deploy again."
        )
    path = Path(settings.secret_file).expanduser()
    if not path.exists():
        _create_secret_file(path)
    secret = path.read_text().strip()
    if not secret:
        raise SecretMissing(f"The session secret file {path} is empty: delete it, and a new one is made.")
    return secret.encode()


def _create_secret_file(path: Path) -> None:
    """Written whole, then linked into place: two apps starting at once read the same secret."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor, draft = tempfile.mkstemp(dir=path.parent, prefix=".secret-")  # mode 0600
    try:
        with os.fdopen(descriptor, "w") as new:
            new.write(secrets.token_urlsafe(32))
        with contextlib.suppress(FileExistsError):  # the other one's is kept
            os.link(draft, path)
    finally:
        os.unlink(draft)
