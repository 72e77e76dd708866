"""A learner's own app code (``workspace/my_app``): imported afresh, run with a time limit, and
explained, with its file and line, when it fails.

The package holds the codelab's four functions in two modules, as notebooks 03 and 04 write them:

* ``translators.py``: ``process_message_gemma(message, history) -> str``, one raw prompt in
  Gemma's chat template, and ``process_message_gemini(message, history) -> list[types.Content]``;
* ``callers.py``: ``call_gemma_model(prompt, temperature, top_p, max_tokens) -> str`` and
  ``call_gemini_model(contents, temperature, top_p, max_tokens) -> str``, each the reply's text.

What the translators are given on every turn the app answers through them: ``message``, the new
message (a string), and ``history``, the conversation before it as Gradio 6 messages,
``[{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}, ...]``: oldest
first, user and assistant taking turns. Failed turns, and the oldest turns once the chat outgrows
the model's context, are left out (the store keeps them). Chat-template markers in the text are
already broken (``hybridchat.templates.neutralize``), so a message cannot forge a turn whatever the
translator does. A module that defines ``SYSTEM_PROMPT`` (notebook 08) puts it at the start of the
first user turn.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic

from hybridchat.errors import BackendError, LearnerCodeFailed, shorten

# Each module, its functions, and the notebook that teaches them.
MODULES = {
    "translators": (("process_message_gemma", "process_message_gemini"), "03"),
    "callers": (("call_gemma_model", "call_gemini_model"), "04"),
}
_LOADS = itertools.count(1)


@dataclass(frozen=True)
class Package:
    """One import of a learner's package: its functions, and why any module did not load."""

    folder: Path
    functions: dict[str, Callable[..., Any]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # module: "my_app/x.py, line 7: SyntaxError: …"
    modules: dict[str, types.ModuleType] = field(default_factory=dict)

    def function(self, name: str) -> Callable[..., Any]:
        """The learner's function ``name``; ``LearnerCodeFailed`` saying why it is not there."""
        if name in self.functions:
            return self.functions[name]
        module = module_of(name)
        if module in self.failures:
            raise LearnerCodeFailed(f"Your code does not load: {self.failures[module]}")
        raise LearnerCodeFailed(
            f"{self.shown(self.folder / f'{module}.py')} has no function `{name}`: "
            f"write it there (notebook {MODULES[module][1]}).",
        )

    def shown(self, path: str | Path) -> str:
        """A path inside the package as a learner reads it: ``my_app/translators.py``."""
        try:
            return f"{self.folder.name}/{Path(path).resolve().relative_to(self.folder).as_posix()}"
        except ValueError:
            return str(path)

    def named(self, name: str, fn: Callable[..., Any], exc: BaseException | None = None) -> str:
        """```name`` (my_app/callers.py, line 14)``: where ``exc`` was raised in the package, else
        where ``fn`` begins; the name alone for a function that is not in the package's folder."""
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if self._inside(f.filename)] if exc else []
        code = getattr(fn, "__code__", None)
        if frames:
            return f"`{name}` ({self.shown(frames[-1].filename)}, line {frames[-1].lineno})"
        if code is not None and self._inside(code.co_filename):
            return f"`{name}` ({self.shown(code.co_filename)}, line {code.co_firstlineno})"
        return f"`{name}`"

    def _inside(self, filename: str) -> bool:
        return Path(filename).resolve().is_relative_to(self.folder)


def module_of(function: str) -> str:
    return next(module for module, (names, _) in MODULES.items() if function in names)


def load(folder: str | Path) -> Package:
    """Import the package in ``folder`` afresh, from its source files as they are now (no
    bytecode cache: a file rewritten within the same second is read again). A module that
    cannot be imported is recorded with its file and line, never raised."""
    folder = Path(folder).resolve()
    package = Package(folder)
    name = f"_hybridchat_learner_{next(_LOADS)}"  # its own name: loads never share modules
    root = types.ModuleType(name, f"The learner's package in {folder}")
    root.__path__ = [str(folder)]
    root.__package__ = name
    sys.modules[name] = root
    for module, (functions, notebook) in MODULES.items():
        path = folder / f"{module}.py"
        if not path.is_file():
            package.failures[module] = (
                f"{package.shown(path)} is missing: run notebook {notebook}'s `%%write_module` cell")
            continue
        try:
            loaded = _execute(path, f"{name}.{module}")
        except Exception as exc:  # the learner's bug: recorded, and shown where it is
            package.failures[module] = _failure(package, exc)
            continue
        package.modules[module] = loaded
        for function in functions:
            if callable(found := getattr(loaded, function, None)):
                package.functions[function] = found
    return package


def _execute(path: Path, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__file__ = str(path)
    module.__package__ = name.rpartition(".")[0]
    sys.modules[name] = module  # dataclasses and typing look a module up by name while it runs
    exec(compile(path.read_bytes(), str(path), "exec", dont_inherit=True), module.__dict__)
    return module


def _failure(package: Package, exc: Exception) -> str:
    if isinstance(exc, SyntaxError):
        return f"{package.shown(exc.filename or '?')}, line {exc.lineno}: SyntaxError: {exc.msg}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if package._inside(f.filename)]
    at = f"{package.shown(frames[-1].filename)}, line {frames[-1].lineno}" if frames else package.folder.name
    return f"{at}: {type(exc).__name__}: {shorten(str(exc), 200)}"


def call(package: Package, name: str, *args: Any, timeout: float) -> Any:
    """The learner's ``name(*args)``, in a thread of its own (with this context: the endpoints
    the app set), waited for at most ``timeout`` seconds. ``LearnerCodeFailed`` when it raises
    (raised from the learner's exception, for the app's log) or runs past the time; a model's
    own error (a ``BackendError`` from ``hybridchat.endpoints``) as it is."""
    return Call(package, name, *args, timeout=timeout).result()


class Call:
    """The learner's ``name(*args)`` under way, in a thread of its own (a daemon: one that never
    returns is left behind, and does not hold the app's exit), with the caller's context."""

    def __init__(self, package: Package, name: str, *args: Any, timeout: float):
        self.package, self.name, self.timeout = package, name, timeout
        self.fn = package.function(name)
        self._outcome: dict[str, Any] = {}
        self._done = threading.Event()
        self._deadline = time.monotonic() + timeout
        context = contextvars.copy_context()

        def run() -> None:
            try:
                self._outcome["value"] = context.run(self.fn, *args)
            except BaseException as exc:  # SystemExit too: a learner's sys.exit() must not end the turn silently
                self._outcome["error"] = exc
            finally:
                self._done.set()

        threading.Thread(target=run, name=f"learner {name}", daemon=True).start()

    def wait(self, seconds: float) -> bool:
        """Whether it has returned (or run out of time), after waiting at most ``seconds``."""
        return self._done.wait(min(seconds, self._left())) or self._left() == 0.0

    def result(self) -> Any:
        """What it returned, once it has (see ``call`` for what it raises)."""
        if not self._done.wait(self._left()):
            raise LearnerCodeFailed(
                f"{self.package.named(self.name, self.fn)} did not return within {self.timeout:g} s, so the app "
                "stopped waiting. Give `requests.post` a timeout (`timeout=endpoints.timeout()`), and check that "
                "nothing loops.",
            )
        if "error" not in self._outcome:
            return self._outcome["value"]
        exc = self._outcome["error"]
        if isinstance(exc, BackendError):
            raise exc
        raise LearnerCodeFailed(raised(self.package, self.name, self.fn, exc)) from exc

    def _left(self) -> float:
        """Seconds until its time is up."""
        return max(0.0, self._deadline - time.monotonic())


def raised(package: Package, name: str, fn: Callable[..., Any], exc: BaseException) -> str:
    """What a learner reads when ``name`` raised ``exc``: where, what, and the hint for it."""
    if isinstance(exc, NotImplementedError):
        return f"{package.named(name, fn)} is not written yet: {_NOT_WRITTEN} (notebook {_notebook(name)})."
    said = f"{type(exc).__name__}: {shorten(str(exc), 200)}" if str(exc) else type(exc).__name__
    if isinstance(exc, pydantic.ValidationError):  # google-genai's types: pydantic's message, reworded whole
        said = f"{type(exc).__name__}: {_invalid(exc)}"
    hint = _hint(name, exc)
    return f"{package.named(name, fn, exc)} raised {said}" + (f". {hint}" if hint else "")


_NOT_WRITTEN = "replace `raise NotImplementedError()` with your code"
# Arguments brought from other APIs (vLLM's, OpenAI's), and google-genai's names for them.
_GENAI_NAMES = {"max_tokens": "max_output_tokens", "max_new_tokens": "max_output_tokens", "stop": "stop_sequences",
                "system": "system_instruction", "system_prompt": "system_instruction"}


def _invalid(exc: pydantic.ValidationError) -> str:
    """What pydantic refused in a google-genai type, by name: an argument it does not know gets
    google-genai's name for it, where it has one."""
    unknown = [".".join(map(str, error["loc"])) for error in exc.errors() if error["type"] == "extra_forbidden"]
    if unknown:
        named = [f"`{arg}`" + (f" (google-genai calls it `{_GENAI_NAMES[arg]}`)" if arg in _GENAI_NAMES else "")
                 for arg in unknown]
        return f"{exc.title} has no argument {', '.join(named)}"
    wrong = "; ".join(f"`{'.'.join(map(str, error['loc']))}`: {error['msg']}" for error in exc.errors()[:3])
    return f"{exc.title} refused its arguments: {wrong}"


def _reply_at(name: str) -> str:
    """Where the caller ``name`` finds the reply's text in the model's answer."""
    where = "`response.text`" if name == "call_gemini_model" else '`response.json()["choices"][0]["text"]`'
    return f"return only the reply's text, {where}"


def _notebook(name: str) -> str:
    return MODULES[module_of(name)][1]


def _hint(name: str, exc: BaseException) -> str:
    """The usual cause of ``exc`` in the learner's ``name``, and its fix; ``""`` when there is none."""
    import requests  # the codelab's HTTP client, and so the learner's

    caller = name.startswith("call_")
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return {
            404: "The server has no such route or model: POST to "
                 '`f"{endpoints.gemma_url()}/v1/completions"` with `"model": endpoints.gemma_model()`.',
            400: "The server refused the request: send `prompt`, `temperature`, `top_p`, `max_tokens` and `stop`, "
                 "with max_tokens within the model's context.",
            401: "This Gemma takes requests with its API key only (a room's Gemma): send "
                 "`headers=endpoints.gemma_headers()`, which holds HYBRIDCHAT_VLLM_API_KEY; if you do, "
                 "that key is wrong.",
            503: "The model is still loading: try again in a minute, or use hybridchat's path meanwhile.",
        }.get(exc.response.status_code, "The model's server answered with an error: `response.text` says why.")
    if isinstance(exc, (requests.exceptions.MissingSchema, requests.exceptions.InvalidURL)):
        return 'The URL is not a whole address: build it as `f"{endpoints.gemma_url()}/v1/completions"`.'
    if isinstance(exc, requests.ConnectionError):
        return ("Nothing answered at that address: take it from `endpoints.gemma_url()`, which is the model's "
                "address wherever your code runs (the notebook, your laptop, the pod).")
    if isinstance(exc, pydantic.ValidationError):
        return "Write the config with google-genai's names: `temperature`, `top_p`, `max_output_tokens`."
    if type(exc).__module__.startswith("google.genai"):
        return ("Gemini refused the request: use `endpoints.gemini_client()` and `endpoints.gemini_model()`, "
                "and the config's names `temperature`, `top_p`, `max_output_tokens`.")
    if caller and isinstance(exc, (KeyError, IndexError, TypeError, AttributeError)):
        return f"Read the answer where it is: {_reply_at(name)}."
    if not caller and isinstance(exc, (KeyError, TypeError, ValueError)):
        return ("Each history item is a message, `{\"role\": ..., \"content\": ...}`: loop `for turn in history` "
                "and read `turn[\"role\"]` and `turn[\"content\"]`.")
    return ""


def wrong_result(package: Package, name: str, fn: Callable[..., Any], value: Any) -> str | None:
    """Why ``value`` is not what the app can use from ``name``, with the fix; ``None`` if it is."""
    at = package.named(name, fn)
    kind = type(value).__name__
    if name == "process_message_gemma":
        return None if isinstance(value, str) else f"{at} returned a {kind}, not one string: return the prompt."
    if name == "process_message_gemini":
        if isinstance(value, list) and all(hasattr(c, "role") and hasattr(c, "parts") for c in value):
            return None
        return f"{at} returned a {kind}, not a list of `types.Content`: one per turn, the new message last."
    if isinstance(value, str):
        if _whole_json(value):
            return f"{at} returned the whole JSON answer as text: {_reply_at(name)}."
        return None if value.strip() else f"{at} returned an empty reply: {_reply_at(name)}, and check max_tokens."
    if value is None:
        if name == "call_gemini_model":
            return (f"{at} returned None: `response.text` is None when Gemini wrote no text (a safety filter, or "
                    "max tokens spent on thinking); else end the function with `return response.text`.")
        return f"{at} returned None: end it with `return`, and {_reply_at(name)}."
    what = {"dict": "the whole JSON answer", "Response": "the whole HTTP response",
            "GenerateContentResponse": "Gemini's whole response"}.get(kind, f"a {kind}")
    return f"{at} returned {what}, not the reply's text: {_reply_at(name)}."


def _whole_json(text: str) -> bool:
    if not text.lstrip().startswith("{"):
        return False
    try:
        answer = json.loads(text)
    except ValueError:
        return False
    return isinstance(answer, dict) and bool({"choices", "candidates", "predictions"} & set(answer))
