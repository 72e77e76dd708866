"""Google sign-in through Identity-Aware Proxy (IAP): who a request is from, as IAP signed it.

In front of the deployed app (``deploy/chat-gateway.yaml``), IAP lets through only people
granted ``roles/iap.httpsResourceAccessor``, and adds to each request a JWT in
``x-goog-iap-jwt-assertion``: ES256, signed with one of IAP's public keys, its audience the
load balancer's backend service (``/projects/NUMBER/global/backendServices/ID``). The app
believes that and nothing else: ``x-goog-authenticated-user-email`` is unsigned, and anyone
who reaches the pod another way can send it.

>>> verifier = IapVerifier(None)
>>> verifier.user("anything")
Traceback (most recent call last):
  ...
hybridchat.errors.SignInRefused: Sign-in is not set up yet: ...
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from google.auth import exceptions, jwt

from hybridchat.config import IAP_KEYS_URL
from hybridchat.errors import SignInRefused
from hybridchat.redact import redact_url

log = logging.getLogger(__name__)

ASSERTION_HEADER = "x-goog-iap-jwt-assertion"
IAP_ISSUER = "https://cloud.google.com/iap"
SIGN_OUT_PATH = "/_gcp_iap/clear_login_cookie"  # IAP answers it: clears its cookie, signs in again
KEYS_KEPT_FOR = 3600.0  # IAP rotates its keys slowly and publishes new ones ahead of use
KEYS_REFETCH_AFTER = 60.0  # an unknown key id refetches at most once a minute (ids are free to make up)
CLOCK_SKEW = 30  # seconds: IAP's clock and the pod's may differ a little


@dataclass(frozen=True)
class SignedInUser:
    """A person as IAP vouches for them: ``email`` is the chats' owner id."""

    email: str
    subject: str  # IAP's stable account id, "accounts.google.com:1234…"


class IapVerifier:
    """Checks IAP's assertions for one ``audience`` against IAP's published keys (``keys_url``:
    ``{key id: PEM public key}``), kept for an hour and refetched when an unknown key id comes."""

    def __init__(
        self,
        audience: str | None,
        keys_url: str = IAP_KEYS_URL,
        *,
        clock: Callable[[], float] = time.time,
        fetch: Callable[[str], dict[str, str]] | None = None,
    ):
        self.audience = audience
        self.keys_url = keys_url
        self._clock = clock
        self._fetch = fetch or _fetch_keys
        self._lock = threading.Lock()
        self._keys: dict[str, str] = {}
        self._fetched_at = float("-inf")

    def user(self, assertion: str | None) -> SignedInUser:
        """The signed-in person ``assertion`` names, or ``SignInRefused`` saying why not."""
        if not self.audience:
            raise SignInRefused(
                "Sign-in is not set up yet: HYBRIDCHAT_IAP_AUDIENCE is empty. Notebook 05 (or docs/deploy.md) "
                "sets it once the load balancer's backend service exists.", status=503,
            )
        if not assertion:
            raise SignInRefused("This app is reached through Google sign-in (Identity-Aware Proxy) only.")
        try:
            header = jwt.decode_header(assertion)
        except (ValueError, exceptions.GoogleAuthError):
            raise SignInRefused("The sign-in assertion is not a JWT.") from None
        if header.get("alg") != "ES256":  # IAP signs with ES256 only; never let the token choose
            raise SignInRefused("The sign-in assertion is not signed the way IAP signs.")
        keys = self._keys_with(str(header.get("kid", "")))
        try:
            claims = jwt.decode(assertion, certs=keys, audience=self.audience, clock_skew_in_seconds=CLOCK_SKEW)
        except (ValueError, exceptions.GoogleAuthError) as exc:
            log.info("sign-in assertion refused: %s", exc)
            raise SignInRefused(
                f"The sign-in assertion is not valid ({_reason(exc)}): reload the page to sign in again."
            ) from None
        if claims.get("iss") != IAP_ISSUER or not claims.get("email") or not claims.get("sub"):
            raise SignInRefused("The sign-in assertion is not IAP's (issuer, e-mail or subject missing).")
        return SignedInUser(email=str(claims["email"]).lower(), subject=str(claims["sub"]))

    def check_keys(self) -> int:
        """How many keys IAP publishes (fetched now): ``doctor``'s check."""
        with self._lock:
            self._refresh()
            return len(self._keys)

    def _keys_with(self, key_id: str) -> dict[str, str]:
        with self._lock:
            age = self._clock() - self._fetched_at
            if age > KEYS_KEPT_FOR or (key_id not in self._keys and age > KEYS_REFETCH_AFTER):
                self._refresh()
            return self._keys

    def _refresh(self) -> None:
        try:
            self._keys = self._fetch(self.keys_url)
        except (httpx.HTTPError, ValueError) as exc:
            if not self._keys:
                raise SignInRefused(
                    f"Sign-in cannot be checked right now: IAP's keys at {redact_url(self.keys_url)} "
                    f"could not be read ({type(exc).__name__}). Try again in a minute.", status=503,
                ) from None
            log.warning("IAP's keys not refreshed (%s); the ones read before are kept", type(exc).__name__)
        self._fetched_at = self._clock()


def _fetch_keys(url: str) -> dict[str, str]:
    response = httpx.get(url, timeout=5)
    response.raise_for_status()
    keys = response.json()
    if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
        raise ValueError("not a {key id: PEM} object")
    return keys


def _reason(exc: Exception) -> str:
    text = str(exc)
    if "expired" in text.lower():
        return "expired"
    if "audience" in text.lower():
        return "meant for another app"
    if "too early" in text.lower():
        return "issued in the future"
    if "not found" in text.lower():
        return "signed with a key IAP does not publish"
    return "its signature does not check out"
