"""Checker cells: compare a learner's functions with hybridchat's reference on many histories.

Each checker imports the learner's package afresh (``hybridchat.learner``), so it checks exactly
what the app will run. It prints one line on a pass; on a wrong answer it raises ``CheckFailed``,
whose one-line hint names the function, its file and line, and what to change. A notebook shows
the hint with no traceback, and it stops "Run All" (and nbval, papermill) there. The app shows
the same hints: in the chat for a turn, at the top for the translators' checks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from hybridchat import history as reference
from hybridchat import learner
from hybridchat.errors import BackendError, LearnerCodeFailed
from hybridchat.lab import progress
from hybridchat.templates import GEMMA

# Gradio 6 chat histories, as the app hands them over.
SAMPLES: list[tuple[str, list[dict[str, str]]]] = [
    ("Hi!", []),
    ("And of Germany?", [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]),
    ("Two lines,\nplease.", [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"},
    ]),
]


class CheckFailed(AssertionError):
    """The learner's code gave a wrong answer; the message says what to change."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows these lines in place of the traceback: the hint is the whole story.
        return [f"❌ {self}"]


# What a checker takes: the learner's package folder (imported afresh, as the app imports it),
# a package already imported, or a function.
Code = str | Path | learner.Package | Callable[..., Any]
_TRANSLATOR_SECONDS = 10  # three short histories: anything longer is a loop
_CALLER_SECONDS = 180


def _function(code: Code, name: str) -> tuple[learner.Package, Callable[..., Any]]:
    if callable(code):  # a function as it is, in no package folder: named without a file
        package = learner.Package(Path(os.devnull), {name: code})
    else:
        package = code if isinstance(code, learner.Package) else learner.load(code)
    try:
        return package, package.function(name)
    except LearnerCodeFailed as exc:
        raise CheckFailed(str(exc)) from None


def _call(package: learner.Package, name: str, *args: Any, seconds: float) -> Any:
    """The learner's function's answer, checked for its type; ``CheckFailed`` with the hint the
    app would show for it."""
    try:
        value = learner.call(package, name, *args, timeout=seconds)
    except BackendError as exc:  # the learner's mistake, or the model's (hybridchat.endpoints)
        raise CheckFailed(str(exc) if isinstance(exc, LearnerCodeFailed) else f"`{name}`: {exc}") from None
    problem = learner.wrong_result(package, name, package.functions[name], value)
    if problem:
        raise CheckFailed(problem)
    return value


def _system_prompt(fn: Callable[..., Any]) -> str | None:
    """The persona a translator's module defines (notebook 08), if any."""
    found = getattr(fn, "__globals__", {}).get("SYSTEM_PROMPT")
    return found if isinstance(found, str) and found.strip() else None


def _gemma_hint(expected: str, got: str) -> str:
    start, end, opener = GEMMA.turn_start, GEMMA.turn_end, GEMMA.opener
    if f"{start}assistant" in got:
        return f"Gemma calls the assistant's turns `model`: write `{start}model`, not `{start}assistant`."
    if f"{start}system" in got:
        return ("Gemma has no system role: its chat template puts the persona at the start of the first user "
                f"turn, then a blank line (`{start}user\\n{{SYSTEM_PROMPT}}\\n\\n{{first message}}`), not in a "
                f"`{start}system` turn of its own")
    if f"{start}user\nrole" in got:
        return ("each history item is a message, not a [user, assistant] pair: loop `for turn in history` and "
                "read `turn['role']` and `turn['content']`")
    if not got.endswith(opener):
        shown = opener.replace("\n", "\\n")
        return f"the prompt must end with `{shown}`, so that Gemma answers next; got …{got[-40:]!r}"
    if got.count(end) != expected.count(end):
        return (f"every turn must end with `{end}` and a newline: expected {expected.count(end)} "
                f"of them, got {got.count(end)} in {got!r}")
    at = next(i for i, (a, b) in enumerate(zip(expected + "\0", got + "\0")) if a != b)
    around = slice(max(at - 20, 0), at + 20)
    return f"first difference at character {at}: expected …{expected[around]!r}, got …{got[around]!r}"


@progress.verdict("03 Gemma")
def gemma_translator(code: Code = "my_app") -> None:
    """Check ``process_message_gemma(message, history)`` against Gemma's chat template (with the
    module's ``SYSTEM_PROMPT`` at the start of the first user turn, where it defines one)."""
    print(_translator(code, "process_message_gemma"))


def _gemma_mismatch(got: Any, message: str, history: Any, system: str | None) -> str | None:
    expected = reference.process_message_gemma(message, history, system_prompt=system)
    return None if got == expected else _gemma_hint(expected, got)


@progress.verdict("03 Gemini")
def gemini_translator(code: Code = "my_app") -> None:
    """Check ``process_message_gemini(message, history)`` against the reference contents (with the
    module's ``SYSTEM_PROMPT`` at the start of the first user turn, where it defines one)."""
    print(_translator(code, "process_message_gemini"))


def _gemini_mismatch(got: Any, message: str, history: Any, system: str | None) -> str | None:
    expected = reference.process_message_gemini(message, history)
    roles = [c.role for c in got]
    if "assistant" in roles:
        return "Gemini calls the assistant's turns `model`: use role='model', not 'assistant'."
    if "system" in roles:
        return ("Gemini's contents hold only `user` and `model` turns: put SYSTEM_PROMPT at the start of the first "
                "user turn's text, then a blank line (hybridchat's path sends it apart, as `system_instruction`)")
    if roles != [c.role for c in expected]:
        return f"expected the roles {[c.role for c in expected]} (history, then the new message), got {roles}"
    texts = [[p.text for p in c.parts or []] for c in got]
    wanted = [[p.text for p in c.parts or []] for c in expected]
    if system:
        wanted[0] = [f"{system}\n\n{wanted[0][0]}"]
    return None if texts == wanted else f"the texts differ: expected {wanted}, got {texts}"


# Each translator's check against the reference, and its verdict when it passes.
_TRANSLATORS: dict[str, tuple[Callable[[Any, str, Any, str | None], str | None], str]] = {
    "process_message_gemma": (_gemma_mismatch, "renders Gemma's chat template{persona} exactly"),
    "process_message_gemini": (_gemini_mismatch, "builds the right contents{persona}"),
}


def _translator(code: Code, name: str) -> str:
    """Run the learner's translator ``name`` on every sample history; ``CheckFailed`` with the
    first mismatch with the reference, else the verdict."""
    mismatch, verdict = _TRANSLATORS[name]
    package, fn = _function(code, name)
    system = _system_prompt(fn)
    for message, history in SAMPLES:
        got = _call(package, name, message, history, seconds=_TRANSLATOR_SECONDS)
        problem = mismatch(got, message, history, system)
        if problem:
            raise CheckFailed(f"{package.named(name, fn)}: {problem}")
    persona = " with your SYSTEM_PROMPT" if system else ""
    return f"✅ {name} {verdict.format(persona=persona)}, on {len(SAMPLES)} histories."


def translator_problems(package: learner.Package) -> list[str]:
    """What notebook 03's checkers say of a package's translators: the app shows it at the top."""
    found = []
    for name in _TRANSLATORS:
        try:
            _translator(package, name)
        except CheckFailed as failed:
            found.append(str(failed))
    return found


# Unusual values, so a function that sends its own instead of the caller's is caught.
_ASKED = {"temperature": 0.35, "top_p": 0.85, "max_tokens": 24}


@progress.verdict("04 Gemma")
def gemma_caller(code: Code = "my_app", server_url: str | None = None) -> None:
    """Check ``call_gemma_model(prompt, temperature, top_p, max_tokens)`` against the running Gemma.

    Where the server keeps its requests (the local stand-in), also that the function sent the
    prompt with the caller's settings and returned what the server answered.
    """
    package, fn = _function(code, "call_gemma_model")
    at = package.named("call_gemma_model", fn)
    prompt = reference.process_message_gemma("What is the capital of France?", [])
    before = _recorded(server_url)
    reply = _call(package, "call_gemma_model", prompt, *_ASKED.values(), seconds=_CALLER_SECONDS)
    if GEMMA.turn_start in reply or reply.startswith(("Prompt:", "User's Turn")):
        raise CheckFailed(f"{at}: the reply still contains the prompt: keep only the new text; got {reply[:80]!r}")
    if GEMMA.turn_end in reply:
        raise CheckFailed(f"{at}: stop at `{GEMMA.turn_end}`: send it as a stop sequence, or cut the reply there")
    if before is not None:
        sent = _sent(server_url, before, at, lambda r: r.get("prompt") == prompt,
                     f"POST the prompt to {server_url}/v1/completions")
        _same_settings(at, sent, "max_tokens")
        if GEMMA.turn_end not in sent["stop"]:
            raise CheckFailed(f'{at}: send `"stop": ["{GEMMA.turn_end}"]`, so that Gemma stops at the end of its turn')
        _same_reply(at, reply, sent, "choices[0].text")
    print(f"✅ call_gemma_model answered: {reply[:80]!r}{_unverified(before)}")


@progress.verdict("04 Gemini")
def gemini_caller(code: Code = "my_app", server_url: str | None = None) -> None:
    """Check ``call_gemini_model(contents, temperature, top_p, max_tokens)`` against the running Gemini,
    and, where the server keeps its requests, what the function sent."""
    package, fn = _function(code, "call_gemini_model")
    at = package.named("call_gemini_model", fn)
    contents = reference.process_message_gemini("What is the capital of France?", [])
    before = _recorded(server_url)
    reply = _call(package, "call_gemini_model", contents, *_ASKED.values(), seconds=_CALLER_SECONDS)
    if before is not None:
        texts = [{"role": c.role, "text": "".join(p.text or "" for p in c.parts or [])} for c in contents]
        sent = _sent(server_url, before, at, lambda r: r.get("contents") == texts,
                     "pass the contents to client.models.generate_content")
        _same_settings(at, sent, "max_output_tokens")
        _same_reply(at, reply, sent, "response.text")
    print(f"✅ call_gemini_model answered: {reply[:80]!r}{_unverified(before)}")


def _recorded(server_url: str | None) -> int | None:
    """The newest request id the server kept, or ``None`` if it keeps none (a real server)."""
    if not server_url:
        return None
    try:
        response = httpx.get(f"{server_url}/stand-in/requests", timeout=10)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    return max((entry["id"] for entry in response.json()), default=0)


def _sent(
    server_url: str | None, before: int, at: str, matches: Callable[[dict[str, Any]], bool], how: str
) -> dict[str, Any]:
    entries = httpx.get(f"{server_url}/stand-in/requests", params={"after": before}, timeout=10).json()
    found = [entry for entry in entries if matches(entry)]
    if not found:
        raise CheckFailed(f"{at} did not send the question to the model: {how}, and return what it answers "
                          f"(it sent {len(entries)} request(s) with other content)" if entries else
                          f"{at} did not send anything to the model: {how}, and return what it answers.")
    last: dict[str, Any] = found[-1]
    return last


def _same_settings(at: str, sent: dict[str, Any], max_name: str) -> None:
    for setting, asked in _ASKED.items():
        if sent.get(setting) != asked:
            shown = max_name if setting == "max_tokens" else setting
            raise CheckFailed(f"{at} must send the {shown} it is given: it was called with {shown}={asked}, "
                              f"the model received {sent.get(setting)!r}")


def _same_reply(at: str, reply: str, sent: dict[str, Any], where: str) -> None:
    if sent.get("reply") is not None and reply.strip() != sent["reply"].strip():
        raise CheckFailed(f"{at} must return the model's text ({where}): the model answered "
                          f"{sent['reply'][:60]!r}, the function returned {reply[:60]!r}")


def _unverified(before: int | None) -> str:
    return "" if before is not None else " (this server keeps no requests: what was sent is not checked here)"


@progress.verdict("05 turn")
def app_turns(store_url: str, session_id: str, models: tuple[str, ...] = ("my_gemma", "my_gemini")) -> None:
    """Check that the app answered through each of the learner's paths (notebook 05), as the
    chat's saved turns say: a turn of each model, the last one with a reply."""
    from hybridchat.store import open_store

    store = open_store(store_url, resilient=False)
    try:
        turns = store.load(session_id)
    finally:
        store.close()
    for model in models:
        mine = [turn for turn in turns if turn.model == model]
        if not mine:
            raise CheckFailed(f"the chat holds no turn of {model}: run the cell above again")
        if mine[-1].status == "error":
            raise CheckFailed(f"{model}: {mine[-1].error or 'no reply'}")
    print(f"✅ the app answered through your code ({', '.join(models)}), and saved each turn.")
