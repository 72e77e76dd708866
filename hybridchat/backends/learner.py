"""The learner's own translators and callers as backends of the app: "Gemma · your code" and
"Gemini · your code", offered beside hybridchat's own path.

``LearnerCode`` keeps the learner's package (``hybridchat.learner``) as the app runs it: imported
again whenever one of its files changed, so a fixed file needs only a page reload, and checked
with notebook 03's checkers at each import. Their hints show at the top of the page, and the code
is used even so: what Gemma makes of a wrong template is part of the lesson.

``LearnerBackend`` answers a turn with the learner's translator and caller of one model family,
one whole reply per turn, as in the codelab. The app keeps what is its own: fitting the context
(the history the translator is given), saving the turn, identities, limits, the guard, and
errors worded for the visitor (the learner's traceback goes to the log).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from hybridchat import learner
from hybridchat.backends.base import BackendHealth, ChatBackend, ContextWindow, GenerationParams, ReplyStream
from hybridchat.endpoints import Endpoints, serving
from hybridchat.errors import LearnerCodeFailed
from hybridchat.history import Message
from hybridchat.lab import check
from hybridchat.sanitize import safe_markdown
from hybridchat.templates import neutralize

log = logging.getLogger(__name__)

Family = Literal["gemma", "gemini"]
# Per model family: the translator, the caller, and the name a person reads.
FAMILIES: dict[Family, tuple[str, str, str]] = {
    "gemma": ("process_message_gemma", "call_gemma_model", "Gemma"),
    "gemini": ("process_message_gemini", "call_gemini_model", "Gemini"),
}
YOUR_CODE, HYBRIDCHAT = "your code", "hybridchat"  # whose code answered, after each reply's model
WAITING_EVERY = 1.0  # seconds between the page's "your code is running (N s)" updates


class LearnerCode:
    """A learner's package as the app runs it: imported afresh when a file changed, then checked."""

    def __init__(self, folder: str | Path, *, timeout: float = 120.0):
        self.folder = Path(folder).resolve()
        self.timeout = timeout
        self._lock = threading.Lock()
        self._files: tuple[tuple[str, int, int], ...] | None = None
        self._package = learner.Package(self.folder)
        self._problems: list[str] = []

    def package(self) -> learner.Package:
        """The package as its files are now (imported again only when one changed)."""
        with self._lock:
            files = _files_of(self.folder)
            if files != self._files:
                self._package = learner.load(self.folder)
                self._problems = [] if self._package.failures else check.translator_problems(self._package)
                self._files = files
                log.info("loaded the learner's code from %s: %d failure(s), %d check(s) failed",
                         self.folder, len(self._package.failures), len(self._problems))
            return self._package

    def failure(self) -> str | None:
        """Why the package does not load (its first module that does not), if it does not."""
        return next(iter(self.package().failures.values()), None)

    def status(self) -> str:
        """The line at the top of the page: whether the learner's code loads and passes notebook 03's checks."""
        failure = self.failure()
        if failure:
            return (f"❌ **Your code does not load**: {safe_markdown(failure)}. hybridchat's own path answers "
                    "meanwhile: fix the file, then reload this page.")
        where = f"`{self.folder.name}/`"
        if self._problems:
            found = "\n".join(f"- {safe_markdown(problem)}" for problem in self._problems)
            return (f"⚠️ **Your code** from {where} answers the turns marked *· {YOUR_CODE}*, as it is, though "
                    f"notebook 03's checks say:\n\n{found}\n\nSee what the model makes of it, then fix the file and "
                    "reload this page.")
        return (f"✅ **Your code** from {where} answers the turns marked *· {YOUR_CODE}*; its translators pass "
                "notebook 03's checks.")


def _files_of(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Each source file's name, modification time and size: what tells that one changed."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        if "__pycache__" not in path.parts:
            stat = path.stat()
            found.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(found)


class LearnerBackend(ChatBackend):
    """One model family answered through the learner's translator and caller."""

    # The persona box is not sent: a system prompt is the learner's translators' job (notebook 08).
    takes_system_prompt = False
    waiting = "your code is running"  # its reply comes whole, as in the codelab

    def __init__(self, code: LearnerCode, hybridchat: ChatBackend, *, family: Family, endpoints: Endpoints):
        self.code = code
        self.hybridchat = hybridchat  # its model's context window and token counts stand for this path's
        self.family = family
        self.endpoints = endpoints
        self.name = f"my_{family}"
        self.label = f"{FAMILIES[family][2]} · {YOUR_CODE}"
        self.default_max_tokens = hybridchat.default_max_tokens

    def stream(self, messages: Sequence[Message], params: GenerationParams) -> ReplyStream:
        return ReplyStream(self._reply(messages, params))

    def _reply(self, messages: Sequence[Message], params: GenerationParams) -> Iterator[str]:
        """The learner's reply, whole; an empty piece each second meanwhile, so that the page says
        the code is running, and a Stop is heard, while it does."""
        translator, caller, _ = FAMILIES[self.family]
        package = self.code.package()
        # Gradio 6 messages, as the codelab's app is given them; the markers already broken.
        history = [{"role": m.role, "content": neutralize(m.content)} for m in messages[:-1]]
        message = neutralize(messages[-1].content) if messages else ""
        try:
            rendered = self._checked(self._call(package, translator, message, history))
            yield ""  # the translator is done: the caller, which waits for the model, is next
            called = self._call(package, caller, rendered, params.temperature, params.top_p, params.max_tokens)
            while not called.wait(WAITING_EVERY):
                yield ""
            reply = self._checked(called)
        except LearnerCodeFailed as failed:
            if failed.__cause__ is not None:  # the learner's traceback, for whoever reads the log
                log.warning("%s", failed, exc_info=failed.__cause__)
            raise
        yield reply

    def _call(self, package: learner.Package, name: str, *args: Any) -> learner.Call:
        # Started in the endpoints' context, not across a yield: Gradio resumes a generator in a
        # copy of the context each time.
        with serving(self.endpoints):
            return learner.Call(package, name, *args, timeout=self.code.timeout)

    @staticmethod
    def _checked(called: learner.Call) -> Any:
        value = called.result()
        problem = learner.wrong_result(called.package, called.name, called.fn, value)
        if problem:
            raise LearnerCodeFailed(problem)
        return value

    def health(self) -> BackendHealth:
        failure = self.code.failure()
        if failure:
            return BackendHealth(False, f"your code does not load: {failure}")
        return self.hybridchat.health()

    def context_window(self) -> ContextWindow | None:
        return self.hybridchat.context_window()

    def count_tokens(self, messages: Sequence[Message], params: GenerationParams) -> int:
        return self.hybridchat.count_tokens(messages, params)
