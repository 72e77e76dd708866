"""Checker cells: compare a learner's function with hybridchat's reference on many histories.

Each check prints one line, a pass or a specific hint, and raises ``CheckFailed`` on a wrong
answer so that a notebook run (nbval, papermill) fails there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def _fail(hint: str) -> None:
    print(f"❌ {hint}")
    raise CheckFailed(hint)


def _call(fn: Callable[..., Any], name: str, *args: Any) -> Any:
    try:
        return fn(*args)
    except NotImplementedError:
        _fail(f"`{name}` is not written yet: replace `raise NotImplementedError()` in its cell with your code.")
    except CheckFailed:
        raise
    except Exception as exc:  # a learner's bug, reported as a hint rather than a stack trace
        _fail(f"`{name}` raised {type(exc).__name__}: {exc}")


def _gemma_hint(expected: str, got: str) -> str:
    if "<start_of_turn>assistant" in got:
        return "Gemma calls the assistant's turns `model`: write `<start_of_turn>model`, not `<start_of_turn>assistant`."
    if not got.endswith("<start_of_turn>model\n"):
        return f"the prompt must end with `<start_of_turn>model\\n`, so that Gemma answers next; got …{got[-40:]!r}"
    if got.count("<end_of_turn>") != expected.count("<end_of_turn>"):
        return (f"every turn must end with `<end_of_turn>` and a newline: expected {expected.count('<end_of_turn>')} "
                f"of them, got {got.count('<end_of_turn>')} in {got!r}")
    at = next(i for i, (a, b) in enumerate(zip(expected + "\0", got + "\0")) if a != b)
    return f"first difference at character {at}: expected …{expected[max(at - 20, 0):at + 20]!r}, got …{got[max(at - 20, 0):at + 20]!r}"


def gemma_translator(fn: Callable[[str, list], str]) -> None:
    """Check ``process_message_gemma(message, history)`` against Gemma's chat template."""
    for message, history in SAMPLES:
        got = _call(fn, "process_message_gemma", message, history)
        if not isinstance(got, str):
            _fail(f"process_message_gemma must return one string; got {type(got).__name__}")
        expected = reference.process_message_gemma(message, history)
        if got != expected:
            _fail(_gemma_hint(expected, got))
    print(f"✅ process_message_gemma renders Gemma's chat template exactly, on {len(SAMPLES)} histories.")


def gemini_translator(fn: Callable[[str, list], list]) -> None:
    """Check ``process_message_gemini(message, history)`` against the reference contents."""
    for message, history in SAMPLES:
        got = _call(fn, "process_message_gemini", message, history)
        if not isinstance(got, list) or not all(hasattr(c, "role") and hasattr(c, "parts") for c in got):
            _fail("process_message_gemini must return a list of google.genai.types.Content")
        expected = reference.process_message_gemini(message, history)
        roles = [c.role for c in got]
        if "assistant" in roles:
            _fail("Gemini calls the assistant's turns `model`: use role='model', not 'assistant'.")
        if roles != [c.role for c in expected]:
            _fail(f"expected the roles {[c.role for c in expected]} (history, then the new message), got {roles}")
        texts = [[p.text for p in c.parts or []] for c in got]
        if texts != [[p.text for p in c.parts] for c in expected]:
            _fail(f"the texts differ: expected {[[p.text for p in c.parts] for c in expected]}, got {texts}")
    print(f"✅ process_message_gemini builds the right contents, on {len(SAMPLES)} histories.")


def gemma_caller(fn: Callable[[str, float, float, int], str]) -> str:
    """Check ``call_gemma_model(prompt, temperature, top_p, max_tokens)`` against the running Gemma."""
    prompt = reference.process_message_gemma("What is the capital of France?", [])
    reply = _call(fn, "call_gemma_model", prompt, 0.2, 0.95, 32)
    if not isinstance(reply, str) or not reply.strip():
        _fail(f"call_gemma_model must return the reply text; got {reply!r}")
    if "<start_of_turn>" in reply or reply.startswith(("Prompt:", "User's Turn")):
        _fail(f"the reply still contains the prompt: keep only the new text; got {reply[:80]!r}")
    if "<end_of_turn>" in reply:
        _fail("stop at `<end_of_turn>`: send it as a stop sequence, or cut the reply there")
    print(f"✅ call_gemma_model answered: {reply[:80]!r}")
    return reply


def gemini_caller(fn: Callable[[list, float, float, int], str]) -> str:
    """Check ``call_gemini_model(contents, temperature, top_p, max_tokens)`` against the running Gemini."""
    contents = reference.process_message_gemini("What is the capital of France?", [])
    reply = _call(fn, "call_gemini_model", contents, 0.2, 0.95, 32)
    if not isinstance(reply, str) or not reply.strip():
        _fail(f"call_gemini_model must return the reply text (response.text); got {reply!r}")
    print(f"✅ call_gemini_model answered: {reply[:80]!r}")
    return reply
