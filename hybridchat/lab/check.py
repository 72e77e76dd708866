"""Checker cells: compare a learner's function with hybridchat's reference on many histories.

Each check prints one line on a pass; on a wrong answer it raises ``CheckFailed``, which a
notebook shows as its one-line hint, with no traceback, and which stops "Run All" (and nbval,
papermill) there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from hybridchat import history as reference

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


def _call(fn: Callable[..., Any], name: str, *args: Any) -> Any:
    try:
        return fn(*args)
    except NotImplementedError:
        raise CheckFailed(
            f"`{name}` is not written yet: replace `raise NotImplementedError()` in its cell with your code."
        ) from None
    except CheckFailed:
        raise
    except Exception as exc:  # a learner's bug, reported as a hint rather than a stack trace
        raise CheckFailed(f"`{name}` raised {type(exc).__name__}: {exc}") from None


def _gemma_hint(expected: str, got: str) -> str:
    if "<start_of_turn>assistant" in got:
        return (
            "Gemma calls the assistant's turns `model`: write `<start_of_turn>model`, not `<start_of_turn>assistant`."
        )
    if not got.endswith("<start_of_turn>model\n"):
        return f"the prompt must end with `<start_of_turn>model\\n`, so that Gemma answers next; got …{got[-40:]!r}"
    if got.count("<end_of_turn>") != expected.count("<end_of_turn>"):
        return (f"every turn must end with `<end_of_turn>` and a newline: expected {expected.count('<end_of_turn>')} "
                f"of them, got {got.count('<end_of_turn>')} in {got!r}")
    at = next(i for i, (a, b) in enumerate(zip(expected + "\0", got + "\0")) if a != b)
    around = slice(max(at - 20, 0), at + 20)
    return f"first difference at character {at}: expected …{expected[around]!r}, got …{got[around]!r}"


def gemma_translator(fn: Callable[[str, list[Any]], str]) -> None:
    """Check ``process_message_gemma(message, history)`` against Gemma's chat template."""
    for message, history in SAMPLES:
        got = _call(fn, "process_message_gemma", message, history)
        if not isinstance(got, str):
            raise CheckFailed(f"process_message_gemma must return one string; got {type(got).__name__}")
        expected = reference.process_message_gemma(message, history)
        if got != expected:
            raise CheckFailed(_gemma_hint(expected, got))
    print(f"✅ process_message_gemma renders Gemma's chat template exactly, on {len(SAMPLES)} histories.")


def gemini_translator(fn: Callable[[str, list[Any]], list[Any]]) -> None:
    """Check ``process_message_gemini(message, history)`` against the reference contents."""
    for message, history in SAMPLES:
        got = _call(fn, "process_message_gemini", message, history)
        if not isinstance(got, list) or not all(hasattr(c, "role") and hasattr(c, "parts") for c in got):
            raise CheckFailed("process_message_gemini must return a list of google.genai.types.Content")
        expected = reference.process_message_gemini(message, history)
        roles = [c.role for c in got]
        if "assistant" in roles:
            raise CheckFailed("Gemini calls the assistant's turns `model`: use role='model', not 'assistant'.")
        if roles != [c.role for c in expected]:
            raise CheckFailed(
                f"expected the roles {[c.role for c in expected]} (history, then the new message), got {roles}"
            )
        texts = [[p.text for p in c.parts or []] for c in got]
        wanted = [[p.text for p in c.parts or []] for c in expected]
        if texts != wanted:
            raise CheckFailed(f"the texts differ: expected {wanted}, got {texts}")
    print(f"✅ process_message_gemini builds the right contents, on {len(SAMPLES)} histories.")


# Unusual values, so a function that sends its own instead of the caller's is caught.
_ASKED = {"temperature": 0.35, "top_p": 0.85, "max_tokens": 24}


def gemma_caller(fn: Callable[[str, float, float, int], str], server_url: str | None = None) -> str:
    """Check ``call_gemma_model(prompt, temperature, top_p, max_tokens)`` against the running Gemma.

    Where the server keeps its requests (the local stand-in), also that the function sent the
    prompt with the caller's settings and returned what the server answered.
    """
    prompt = reference.process_message_gemma("What is the capital of France?", [])
    before = _recorded(server_url)
    reply = _call(fn, "call_gemma_model", prompt, *_ASKED.values())
    if not isinstance(reply, str) or not reply.strip():
        raise CheckFailed(f"call_gemma_model must return the reply text; got {reply!r}")
    if "<start_of_turn>" in reply or reply.startswith(("Prompt:", "User's Turn")):
        raise CheckFailed(f"the reply still contains the prompt: keep only the new text; got {reply[:80]!r}")
    if "<end_of_turn>" in reply:
        raise CheckFailed("stop at `<end_of_turn>`: send it as a stop sequence, or cut the reply there")
    if before is not None:
        sent = _sent(server_url, before, "call_gemma_model", lambda r: r.get("prompt") == prompt,
                     f"POST the prompt to {server_url}/v1/completions")
        _same_settings("call_gemma_model", sent, "max_tokens")
        if "<end_of_turn>" not in sent["stop"]:
            raise CheckFailed('send `"stop": ["<end_of_turn>"]`, so that Gemma stops at the end of its turn')
        _same_reply("call_gemma_model", reply, sent, "choices[0].text")
    print(f"✅ call_gemma_model answered: {reply[:80]!r}{_unverified(before)}")
    return str(reply)


def gemini_caller(fn: Callable[[list[Any], float, float, int], str], server_url: str | None = None) -> str:
    """Check ``call_gemini_model(contents, temperature, top_p, max_tokens)`` against the running Gemini,
    and, where the server keeps its requests, what the function sent."""
    contents = reference.process_message_gemini("What is the capital of France?", [])
    before = _recorded(server_url)
    reply = _call(fn, "call_gemini_model", contents, *_ASKED.values())
    if not isinstance(reply, str) or not reply.strip():
        raise CheckFailed(f"call_gemini_model must return the reply text (response.text); got {reply!r}")
    if before is not None:
        texts = [{"role": c.role, "text": "".join(p.text or "" for p in c.parts or [])} for c in contents]
        sent = _sent(server_url, before, "call_gemini_model", lambda r: r.get("contents") == texts,
                     "pass the contents to client.models.generate_content")
        _same_settings("call_gemini_model", sent, "max_output_tokens")
        _same_reply("call_gemini_model", reply, sent, "response.text")
    print(f"✅ call_gemini_model answered: {reply[:80]!r}{_unverified(before)}")
    return str(reply)


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
    server_url: str | None, before: int, name: str, matches: Callable[[dict[str, Any]], bool], how: str
) -> dict[str, Any]:
    entries = httpx.get(f"{server_url}/stand-in/requests", params={"after": before}, timeout=10).json()
    found = [entry for entry in entries if matches(entry)]
    if not found:
        raise CheckFailed(f"`{name}` did not send the question to the model: {how}, and return what it answers "
                          f"(it sent {len(entries)} request(s) with other content)" if entries else
                          f"`{name}` did not send anything to the model: {how}, and return what it answers.")
    last: dict[str, Any] = found[-1]
    return last


def _same_settings(name: str, sent: dict[str, Any], max_name: str) -> None:
    for setting, asked in _ASKED.items():
        if sent.get(setting) != asked:
            shown = max_name if setting == "max_tokens" else setting
            raise CheckFailed(f"`{name}` must send the {shown} it is given: it was called with {shown}={asked}, "
                              f"the model received {sent.get(setting)!r}")


def _same_reply(name: str, reply: str, sent: dict[str, Any], where: str) -> None:
    if sent.get("reply") is not None and reply.strip() != sent["reply"].strip():
        raise CheckFailed(f"`{name}` must return the model's text ({where}): the model answered "
                          f"{sent['reply'][:60]!r}, the function returned {reply[:60]!r}")


def _unverified(before: int | None) -> str:
    return "" if before is not None else " (this server keeps no requests: what was sent is not checked here)"
