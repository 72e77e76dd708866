"""``hybridchat room rehearse``: drive the room's Gemma as a room would, before the day.

Each simulated attendee holds one conversation that grows turn by turn, sent as the app sends
it (its vLLM backend, the history as the chat API's messages, the app's sampling defaults),
with a think time between turns. Meanwhile the server's ``/metrics`` is read twice a second for
its queue and prefix cache. The figures are those of ``vllm bench serve`` and guidellm: time to
first token and time per output token, as percentiles.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from hybridchat import vllm_metrics
from hybridchat.backends import GenerationParams, VllmBackend, VllmClient
from hybridchat.errors import BackendError, BackendRejected
from hybridchat.history import conversation
from hybridchat.redact import redact_url

# A workshop's conversation: each chat starts at another question, then goes on in order.
QUESTIONS = (
    "What is Kubernetes, in two sentences?",
    "And what does GKE Autopilot manage for me?",
    "Why would I serve an open model like Gemma myself instead of calling an API?",
    "What does vLLM do that a plain Python web server does not?",
    "How should a chat app keep each conversation's history?",
    "What is Workload Identity, briefly?",
    "Summarise what we discussed in three bullet points.",
    "Thanks! One tip for a first deployment?",
)
_KINDS = {  # an error's class: what the table calls it
    "BackendUnavailable": "not reachable", "BackendTimeout": "timed out", "BackendLoading": "loading",
    "QuotaExceeded": "busy (429)", "ContextOverflow": "over the context", "BadResponse": "cut off",
    "EmptyResponse": "empty reply",
}


class Unusable(ValueError):
    """The URL, the key or the server cannot be rehearsed: one line says which."""


@dataclass(frozen=True)
class TurnResult:
    chat: int
    turn: int
    first_token_s: float | None
    seconds: float
    tokens: int
    error: str | None = None


@dataclass
class Rehearsal:
    """What a rehearsal measured, and what it concludes."""

    url: str
    model: str
    chats: int
    turns: int
    think_s: float
    max_tokens: int
    results: list[TurnResult] = field(default_factory=list)
    queue_max: float | None = None  # vllm:num_requests_waiting, its most; None: no /metrics
    running_max: float | None = None
    prefix_hit_rate: float | None = None
    wall_s: float = 0.0

    @property
    def answered(self) -> list[TurnResult]:
        return [r for r in self.results if r.error is None]

    def first_tokens(self) -> list[float]:
        return sorted(r.first_token_s for r in self.answered if r.first_token_s is not None)

    def per_token_s(self) -> float | None:
        """Time per output token after the first (the median over replies)."""
        gaps = [(r.seconds - r.first_token_s) / (r.tokens - 1) for r in self.answered
                if r.first_token_s is not None and r.tokens > 1]
        return statistics.median(gaps) if gaps else None

    def tokens_per_s(self) -> float | None:
        """What one chat sees stream in: output tokens per second of a reply (the median)."""
        rates = [r.tokens / r.seconds for r in self.answered if r.seconds > 0 and r.tokens]
        return statistics.median(rates) if rates else None

    def errors(self) -> Counter[str]:
        return Counter(r.error for r in self.results if r.error is not None)

    def verdict(self, ttft_goal_s: float, queue_limit: int) -> tuple[bool, str]:
        """Whether the server holds the room, in one sentence."""
        errors, p95 = self.errors(), percentile(self.first_tokens(), 95)
        failed = sum(errors.values())
        if failed > 0.05 * len(self.results) or not self.answered:
            kinds = ", ".join(f"{n} {kind}" for kind, n in errors.most_common())
            return False, (f"{failed} of {len(self.results)} turns failed ({kinds}): fix the server or add a replica "
                           "(docs/instructors.md)")
        if self.queue_max is not None and self.queue_max > queue_limit:
            return False, f"the queue reached {self.queue_max:.0f}: add a replica (docs/instructors.md)"
        if p95 is not None and p95 > ttft_goal_s:
            return False, (f"p95 to first token {p95:.1f} s, over the {ttft_goal_s:g} s goal: add a replica "
                           "(docs/instructors.md)")
        return True, f"holds {self.chats} chats: p95 to first token {p95:.1f} s"

    def table(self) -> list[tuple[str, str]]:
        ttft = self.first_tokens()
        per_token, rate, errors = self.per_token_s(), self.tokens_per_s(), self.errors()
        no_metrics = "not served (no vLLM /metrics)"
        return [
            ("chats × turns", f"{self.chats} × {self.turns}, think {self.think_s:g} s, at most {self.max_tokens} "
                              "tokens a reply"),
            ("turns answered", f"{len(self.answered)} of {len(self.results)} in {self.wall_s:.0f} s"),
            ("time to first token, p50 / p95", f"{_s(percentile(ttft, 50))} / {_s(percentile(ttft, 95))}"),
            ("time per output token (median)", f"{per_token * 1000:.0f} ms" if per_token is not None else "–"),
            ("tokens per second per chat (median)", f"{rate:.1f}" if rate is not None else "–"),
            ("errors", ", ".join(f"{n} {kind}" for kind, n in errors.most_common()) or "none"),
            ("queue (vllm:num_requests_waiting), max", no_metrics if self.queue_max is None else
             f"{self.queue_max:.0f} ({self.running_max:.0f} running at most)"),
            ("prefix cache hit rate", no_metrics if self.queue_max is None else
             f"{self.prefix_hit_rate:.0%}" if self.prefix_hit_rate is not None else "no prompt looked up"),
        ]

    def record(self, ttft_goal_s: float, queue_limit: int) -> dict[str, Any]:
        holds, verdict = self.verdict(ttft_goal_s, queue_limit)
        ttft = self.first_tokens()
        return {**{k: v for k, v in asdict(self).items() if k != "results"},
                "ttft_p50_s": percentile(ttft, 50), "ttft_p95_s": percentile(ttft, 95),
                "per_token_s": self.per_token_s(), "tokens_per_s": self.tokens_per_s(),
                "errors": dict(self.errors()), "holds": holds, "verdict": verdict,
                "turns_measured": [asdict(r) for r in self.results]}


def percentile(values: list[float], p: int) -> float | None:
    """The ``p``-th percentile (linear between the closest ranks); ``None`` of nothing."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def _s(seconds: float | None) -> str:
    return f"{seconds:.2f} s" if seconds is not None else "–"


def preflight(url: str, key: str | None, timeout: float = 15) -> str:
    """The model the server serves; ``Unusable`` saying what is wrong with the URL, key or server."""
    shown = redact_url(url)
    if not url.startswith(("http://", "https://")):
        raise Unusable(f"{shown} is not an http:// or https:// address.")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        answer = httpx.get(f"{url.rstrip('/')}/v1/models", headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise Unusable(f"nothing answers at {shown} ({type(exc).__name__}): check the address.") from None
    if answer.status_code in (401, 403):
        raise Unusable(f"{shown} refused the key (HTTP {answer.status_code}): set HYBRIDCHAT_VLLM_API_KEY to the "
                       "room's key." if key else f"{shown} wants a key (HTTP {answer.status_code}): set "
                       "HYBRIDCHAT_VLLM_API_KEY to the room's key.")
    try:
        cards = answer.json()["data"] if answer.status_code == 200 else None
        model = cards[0]["id"] if cards else None
    except (ValueError, KeyError, IndexError, TypeError):
        model = None
    if not isinstance(model, str):
        kind = answer.headers.get("content-type", "no content type").split(";")[0]
        raise Unusable(f"{shown} does not answer as vLLM: GET /v1/models gave HTTP {answer.status_code} ({kind}), "
                       "not its list of models.")
    return model


def rehearse(url: str, key: str | None, *, chats: int, turns: int, think_s: float, max_tokens: int,
             timeout: float = 300, seed: int = 0, on_turn: Callable[[], None] = lambda: None) -> Rehearsal:
    """Run ``chats`` conversations of ``turns`` turns at once against the server at ``url``."""
    model = preflight(url, key)
    client = VllmClient(url, model=model, api_key=key, timeout=timeout)
    backend = VllmBackend(client)
    params = GenerationParams(max_tokens=max_tokens)
    rehearsal = Rehearsal(redact_url(url), model, chats, turns, think_s, max_tokens)
    lock, done = threading.Lock(), threading.Event()

    def attendee(chat: int) -> None:
        pace = random.Random(seed * 1000 + chat)
        history: list[dict[str, str]] = []
        time.sleep(pace.uniform(0, think_s))  # a room does not press Enter all at once
        for turn in range(turns):
            if turn:
                time.sleep(think_s * pace.uniform(0.5, 1.5))
            question = QUESTIONS[(chat + turn) % len(QUESTIONS)]
            result, reply = _turn(backend, conversation(question, history), params, chat, turn)
            history += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
            with lock:
                rehearsal.results.append(result)
            on_turn()

    loads: list[vllm_metrics.Load] = []
    watcher = threading.Thread(target=_watch, args=(url, loads, done), daemon=True)
    started = time.monotonic()
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=chats) as pool:
            list(pool.map(attendee, range(chats)))
    finally:
        done.set()
        watcher.join()
        client.close()
    rehearsal.wall_s = time.monotonic() - started
    if loads:
        rehearsal.queue_max = max(load.waiting for load in loads)
        rehearsal.running_max = max(load.running for load in loads)
        rehearsal.prefix_hit_rate = loads[-1].hit_rate_since(loads[0])
    return rehearsal


def _turn(backend: VllmBackend, messages: Any, params: GenerationParams, chat: int, turn: int
          ) -> tuple[TurnResult, str]:
    started = time.monotonic()
    first: float | None = None
    pieces: list[str] = []
    try:
        stream = backend.stream(messages, params)
        for piece in stream:
            if piece and first is None:
                first = time.monotonic() - started
            pieces.append(piece)
    except BackendError as exc:
        status = f" (HTTP {exc.status_code})" if isinstance(exc, BackendRejected) and exc.status_code else ""
        kind = _KINDS.get(type(exc).__name__, f"{type(exc).__name__}{status}")
        return TurnResult(chat, turn, first, time.monotonic() - started, 0, kind), "".join(pieces)
    reply = "".join(pieces)
    tokens = stream.usage.completion_tokens if stream.usage else max(len(reply.split()), 1)
    return TurnResult(chat, turn, first, time.monotonic() - started, tokens), reply


def _watch(url: str, loads: list[vllm_metrics.Load], done: threading.Event, every: float = 0.5) -> None:
    """Read the server's load until ``done``, and once more after (the prefix cache's last counts)."""
    with httpx.Client() as http:
        while True:
            load = vllm_metrics.read(url, http=http)
            if load is None and not loads:
                return  # no vLLM /metrics here: nothing to watch
            if load is not None:
                loads.append(load)
            if done.wait(every):
                final = vllm_metrics.read(url, http=http)
                if final is not None:
                    loads.append(final)
                return
