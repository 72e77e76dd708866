"""Secrets out of whatever is shown or logged: a password in a URL, a key in a query string.

Every URL hybridchat shows (the chat, the model selector, ``doctor``) or logs goes through
``redact_url``; ``RedactingFilter`` applies ``redact`` to every log record a handler writes,
other libraries' included (httpx logs each request's full URL).

>>> redact_url("http://alice:s3cret@gemma:8000/v1?key=AIza123&stream=1")
'http://***@gemma:8000/v1?key=***&stream=1'
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hybridchat.config import Settings

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\x00-\x1f\x7f\"'<>`]+")
# User info ends at the last "@" before the path: a password with an unescaped "@" goes too.
_USER_INFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#]*@")
_SECRET_PARAM = re.compile(
    r"([?&](?:key|api_key|apikey|token|access_token|password|secret|sig|signature)=)[^&#]*", re.IGNORECASE
)
HIDDEN = "***"


def redact_url(url: str) -> str:
    """``url`` without its user info and the values of secret-looking query parameters; the
    rest exactly as it was."""
    return _SECRET_PARAM.sub(rf"\1{HIDDEN}", _USER_INFO.sub(rf"\1{HIDDEN}@", url, count=1))


def redact(text: str) -> str:
    """``text`` with every URL in it redacted."""
    return _URL.sub(lambda found: redact_url(found.group(0)), text)


class RedactingFilter(logging.Filter):
    """Redacts the URLs of each record (message and traceback) before a handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def configure_logging(settings: Settings) -> None:
    """A command's logging: ``settings.log_level``, every handler redacting."""
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    # httpx (httpx2 where the SDKs find it) logs every request at INFO, full URL included, and
    # google-genai each call's settings: only their warnings are of use, unless one is debugging.
    for noisy in ("httpx", "httpx2", "httpcore", "google_genai"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if settings.log_level == "DEBUG" else logging.WARNING)
