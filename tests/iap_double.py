"""A double of Identity-Aware Proxy in front of the app, on 127.0.0.1, and the ES256 keys it signs with.

``IapKeys`` makes an ES256 key pair here (nothing is downloaded), publishes the public half as
IAP does at https://www.gstatic.com/iap/verify/public_key (``{key id: PEM}``) and signs
assertions as IAP does: ``iss`` https://cloud.google.com/iap, ``aud`` the backend service,
``email``, ``sub``, ``iat``, ``exp``.

``proxy_app`` is the Gateway with IAP on, as a browser meets it:

* a request without the sign-in cookie is sent (302) to Google's sign-in page; a test "signs
  in" at ``/_iap_double/sign_in?user=EMAIL``, which sets the cookie as Google's flow would;
* a signed-in person who is not a member (``roles/iap.httpsResourceAccessor``) gets IAP's 403;
* a member's request goes on to the app with IAP's headers, and whatever ``x-goog-*``
  headers the client sent are dropped first, as IAP does;
* ``/_gcp_iap/clear_login_cookie`` signs out; ``/_iap_double/public_key`` is the key set.

Run as ``python iap_double.py --port P --upstream URL --audience A --members a@x,b@y
--key-file F`` (the cloud doubles' Gateway), or use ``proxy_app`` in-process.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.auth import jwt
from google.auth.crypt import es256
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

IAP_ISSUER = "https://cloud.google.com/iap"
COOKIE = "iap_double_user"
KEYS_PATH = "/_iap_double/public_key"
# Not passed on (the Host header is: a Gateway keeps it, and Gradio builds its URLs from it).
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}


class IapKeys:
    def __init__(self, private_pem: bytes | None = None, key_id: str | None = None):
        self.private_pem = private_pem or ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.key_id = key_id or hashlib.sha256(self.private_pem).hexdigest()[:8]
        self._signer = es256.ES256Signer.from_string(self.private_pem, self.key_id)

    @classmethod
    def load_or_make(cls, path: Path) -> IapKeys:
        """The keys kept in ``path`` (made there the first time): one key set across restarts."""
        if not path.exists():
            keys = cls()
            path.write_bytes(keys.private_pem)
            return keys
        return cls(path.read_bytes(), key_id=hashlib.sha256(path.read_bytes()).hexdigest()[:8])

    def public_keys(self) -> dict[str, str]:
        public = serialization.load_pem_private_key(self.private_pem, None).public_key()
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return {self.key_id: pem.decode()}

    def assertion(self, email: str, audience: str, *, lifetime: float = 600, issued: float | None = None,
                  issuer: str = IAP_ISSUER, **claims: object) -> str:
        now = time.time() if issued is None else issued
        payload = {"iss": issuer, "aud": audience, "email": email, "sub": subject(email),
                   "iat": int(now), "exp": int(now + lifetime), "hd": email.partition("@")[2], **claims}
        return jwt.encode(self._signer, payload).decode()


def subject(email: str) -> str:
    """A stable account id for ``email``, in IAP's form."""
    return "accounts.google.com:" + str(int(hashlib.sha256(email.encode()).hexdigest()[:15], 16))


def proxy_app(upstream: str, keys: IapKeys, audience: str, members: set[str], *, iap_on: bool = True) -> Starlette:
    """The Gateway; ``iap_on=False``: one without IAP, passing requests through as they come."""
    client = httpx.AsyncClient(base_url=upstream, timeout=None)

    async def public_key(request: Request) -> Response:
        return JSONResponse(keys.public_keys())

    async def sign_in(request: Request) -> Response:
        response = RedirectResponse("/", status_code=302)
        response.set_cookie(COOKIE, request.query_params["user"].lower(), httponly=True)
        return response

    async def sign_out(request: Request) -> Response:
        response = PlainTextResponse("You have been signed out.")
        response.delete_cookie(COOKIE)
        return response

    async def forward(request: Request) -> Response:
        headers = [(k, v) for k, v in request.headers.items() if k not in HOP_BY_HOP]
        if iap_on:
            user = request.cookies.get(COOKIE)
            if not user:
                return RedirectResponse("https://accounts.google.com/o/oauth2/v2/auth?client_id=iap-double", status_code=302)
            if user not in members:
                return PlainTextResponse("You don't have access. Ask for roles/iap.httpsResourceAccessor.", status_code=403)
            headers = [(k, v) for k, v in headers if not k.startswith("x-goog-")]
            headers += [("x-goog-iap-jwt-assertion", keys.assertion(user, audience)),
                        ("x-goog-authenticated-user-email", f"accounts.google.com:{user}"),
                        ("x-goog-authenticated-user-id", subject(user))]
        upstream_request = client.build_request(
            request.method, request.url.path, params=request.query_params, headers=headers, content=await request.body()
        )
        answer = await client.send(upstream_request, stream=True)
        kept = {k: v for k, v in answer.headers.items() if k not in HOP_BY_HOP}
        return StreamingResponse(answer.aiter_raw(), status_code=answer.status_code, headers=kept,
                                 background=BackgroundTask(answer.aclose))

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
    return Starlette(routes=[
        Route(KEYS_PATH, public_key),
        Route("/_iap_double/sign_in", sign_in),
        Route("/_gcp_iap/clear_login_cookie", sign_out),
        Route("/{path:path}", forward, methods=methods),
    ])


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    for name in ("--port", "--upstream", "--audience", "--members", "--key-file"):
        parser.add_argument(name, required=True)
    parser.add_argument("--open", action="store_true", help="a Gateway without IAP")
    args = parser.parse_args()
    keys = IapKeys.load_or_make(Path(args.key_file))
    members = {m.strip().lower() for m in args.members.split(",") if m.strip()}
    uvicorn.run(proxy_app(args.upstream, keys, args.audience, members, iap_on=not args.open), host="127.0.0.1", port=int(args.port), log_level="warning")


if __name__ == "__main__":
    main()
