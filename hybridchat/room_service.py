"""``hybridchat room serve``: the room's progress service.

Attendees' checker cells ``POST /progress`` their verdicts, with the key they already have for
the room's Gemma. The instructor's page (``/`` or ``/progress``, behind the instructor's own key:
a sign-in form, or the same Bearer header for scripts) shows attendees by exercises, the one stuck
longest first, and updates itself every few seconds.

What a post may hold is bounded (its size, each field's length and characters) and so is what
anyone can make the board hold: each attendee's posts per minute, and the new names one address
may bring per minute, so a script flooding the service neither grows the board without end nor
pushes other attendees' verdicts out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from hybridchat import vllm_metrics
from hybridchat.room_page import board_html, login_html, page_html
from hybridchat.store.progress import ProgressStore, Standing

MAX_BODY = 4096  # bytes: a verdict is a few hundred
POSTS_PER_MINUTE = 30  # per attendee: a checker cell run over and over is a few a minute
NEW_NAMES = 200  # names one address may bring at once (a room behind one NAT), then ...
NEW_NAMES_PER_MINUTE = 6  # ... this many more a minute
MOST_ATTENDEES = 1000
COOKIE = "hybridchat_room"
ATTENDEES_KEY_REFUSED = "The attendees' key does not open this page: sign in with the instructor's."
_LOAD_EVERY = 5.0  # seconds between two reads of the Gemma's /metrics

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=60)]


class Posted(BaseModel):
    """One verdict as a checker cell sends it."""

    model_config = ConfigDict(extra="ignore")
    attendee: Name
    exercise: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40,
                                               pattern=r"^[\w .:-]+$")]
    status: Literal["ok", "hint"]
    hint: Annotated[str, StringConstraints(max_length=300)] = ""
    notebook: Annotated[str, StringConstraints(max_length=60)] = ""
    time: datetime | None = None


class _Window:
    """Events per key in the last minute, for at most ``keys`` keys (the oldest forgotten)."""

    def __init__(self, most: int, burst: int, clock: Callable[[], float], keys: int = 10_000):
        self.most, self.burst, self._clock, self._keys = most, burst, clock, keys
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, key: str) -> bool:
        now = self._clock()
        recent = self._seen.pop(key, None) or deque()
        while recent and now - recent[0] > 60 * self.burst / self.most:
            recent.popleft()
        allowed = len(recent) < self.burst
        if allowed:
            recent.append(now)
        self._seen[key] = recent
        while len(self._seen) > self._keys:
            self._seen.popitem(last=False)
        return allowed


class Room:
    """The service's state: the board's store, the two keys, and the limits."""

    def __init__(self, store: ProgressStore, attendee_key: str, instructor_key: str, gemma_url: str | None,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self._attendee_key, self._instructor_key = attendee_key, instructor_key
        self.gemma_url = gemma_url
        self._lock = threading.Lock()
        self._names = {standing.attendee for standing in store.standings()}
        self._posts = _Window(POSTS_PER_MINUTE, POSTS_PER_MINUTE, clock)
        self._newcomers = _Window(NEW_NAMES_PER_MINUTE, NEW_NAMES, clock)
        self._load: tuple[float, vllm_metrics.Load | None] = (-_LOAD_EVERY, None)
        self._clock = clock

    def key_of(self, given: str) -> Literal["instructor", "attendee"] | None:
        """Whose key ``given`` is, if anyone's."""
        if given and hmac.compare_digest(given, self._instructor_key):
            return "instructor"
        if given and hmac.compare_digest(given, self._attendee_key):
            return "attendee"
        return None

    def is_instructor(self, request: Request) -> bool:
        """Signed in with the form (its cookie) or sending the instructor's key."""
        given = _bearer(request)
        if given:
            return self.key_of(given) == "instructor"
        return hmac.compare_digest(request.cookies.get(COOKIE, ""), self.cookie())

    def cookie(self) -> str:
        """The page's sign-in cookie: made from the instructor's key, never the key itself."""
        return hmac.new(self._instructor_key.encode(), b"room progress page", hashlib.sha256).hexdigest()

    def admit(self, attendee: str, address: str) -> str | None:
        """Why this post is refused now, or ``None``."""
        with self._lock:
            if not self._posts.allow(attendee):
                return f"more than {POSTS_PER_MINUTE} verdicts a minute from {attendee!r}: try again in a minute"
            if attendee in self._names:
                return None
            if len(self._names) >= MOST_ATTENDEES:
                return f"the room is full: {MOST_ATTENDEES} attendees"
            if not self._newcomers.allow(address):
                return "too many new attendees from this address: try again in a minute"
            self._names.add(attendee)
            return None

    def gemma_load(self) -> vllm_metrics.Load | None:
        if not self.gemma_url:
            return None
        read_at, load = self._load
        if self._clock() - read_at >= _LOAD_EVERY:
            load = vllm_metrics.read(self.gemma_url, timeout=2)
            self._load = (self._clock(), load)
        return load


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _refused(status: int, why: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": why}, status_code=status, headers=headers)


async def _body(request: Request) -> bytes | None:
    """The request's body, or ``None`` once it passes ``MAX_BODY`` (read no further)."""
    if int(request.headers.get("content-length") or 0) > MAX_BODY:
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return None
    return body


def create_app(room: Room, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> FastAPI:
    web = FastAPI(title="hybridchat room", docs_url=None, redoc_url=None, openapi_url=None)
    script_nonce = secrets.token_urlsafe(12)

    @web.middleware("http")
    async def headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        answer: Response = await call_next(request)
        answer.headers["Content-Security-Policy"] = (f"default-src 'none'; script-src 'nonce-{script_nonce}'; "
                                                     "style-src 'unsafe-inline'; connect-src 'self'; "
                                                     "form-action 'self'; frame-ancestors 'none'")
        answer.headers["X-Content-Type-Options"] = "nosniff"
        answer.headers["Cache-Control"] = "no-store"
        return answer

    @web.get("/healthz")
    def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @web.post("/progress")
    async def progress(request: Request) -> Response:
        if room.key_of(_bearer(request)) is None:
            return _refused(401, "send the room's key as 'Authorization: Bearer KEY'")
        body = await _body(request)
        if body is None:
            return _refused(413, f"a verdict is at most {MAX_BODY} bytes")
        try:
            posted = Posted.model_validate(json.loads(body))
        except (ValueError, UnicodeDecodeError) as exc:
            problem = exc.errors()[0] if isinstance(exc, ValidationError) else None
            where = ".".join(map(str, problem["loc"])) if problem else ""
            return _refused(400 if problem is None else 422,
                            f"{where}: {problem['msg']}" if problem else "the body is not JSON")
        why = room.admit(posted.attendee, request.client.host if request.client else "")
        if why:
            return _refused(429, why, **{"Retry-After": "60"})
        at = now()
        when = posted.time.astimezone(UTC) if posted.time and posted.time.tzinfo else at
        when = min(max(when, at - timedelta(days=1)), at)  # an attendee's clock is theirs: kept within a day
        room.store.record(Standing(posted.attendee, posted.exercise, posted.status,
                                   posted.hint.split("\n", 1)[0] if posted.status == "hint" else "",
                                   posted.notebook, when, when))
        return JSONResponse({"kept": True})

    def page_or_login(request: Request) -> Response:
        if room.is_instructor(request):
            return HTMLResponse(page_html(board_html(room.store.standings(), now()), _load_line(room), script_nonce))
        given = _bearer(request)
        said = (ATTENDEES_KEY_REFUSED if room.key_of(given) == "attendee" else "That is not the instructor's key."
                ) if given else ""
        return HTMLResponse(login_html(said), status_code=401 if given else 200)

    web.get("/")(page_or_login)
    web.get("/progress")(page_or_login)

    @web.post("/progress/login")
    async def login(request: Request) -> Response:
        body = await _body(request)
        whose = room.key_of((_form_value(body, "key") if body is not None else "").strip())
        if whose != "instructor":
            said = ATTENDEES_KEY_REFUSED if whose == "attendee" else "That is not the instructor's key."
            return HTMLResponse(login_html(said), status_code=401)
        answer = RedirectResponse("/progress", status_code=303)
        answer.set_cookie(COOKIE, room.cookie(), httponly=True, samesite="strict",
                          secure=request.url.scheme == "https", max_age=12 * 3600)
        return answer

    @web.get("/progress/board")
    def board(request: Request) -> Response:
        if not room.is_instructor(request):
            return _refused(401, "sign in with the instructor's key")
        return JSONResponse({"board": board_html(room.store.standings(), now()), "load": _load_line(room)})

    return web


def _form_value(body: bytes, name: str) -> str:
    return parse_qs(body.decode(errors="replace")).get(name, [""])[0]


def _load_line(room: Room) -> str:
    if not room.gemma_url:
        return "The room's Gemma: not named (--gemma-url)."
    load = room.gemma_load()
    return f"The room's Gemma: {load.line()}." if load else "The room's Gemma: its /metrics did not answer."

