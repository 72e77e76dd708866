"""Run a workshop command from a notebook: output streamed as it comes, a timeout, secrets masked;
or leave one running in the background for later cells (``Background``)."""

from __future__ import annotations

import atexit
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ShownAlone:
    """Mixed into an exception whose message is the whole story: IPython shows ``Name: message``
    in place of a traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


class CommandFailed(RuntimeError):
    """A command exited non-zero or ran past its timeout; the message ends with its last lines."""


@dataclass(frozen=True)
class Command:
    """A command line; ``secrets`` are values in ``argv`` that are never shown."""

    argv: tuple[str, ...]
    cwd: Path | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def __str__(self) -> str:
        shown = shlex.join(self.argv)
        for secret in self.secrets:
            shown = shown.replace(secret, "****")
        return shown


def command(*argv: str, cwd: Path | str | None = None, secrets: tuple[str, ...] = ()) -> Command:
    return Command(tuple(argv), Path(cwd) if cwd else None, secrets)


def run(cmd: Command, *, timeout: float = 600, echo: bool = True, progress: str | None = None) -> str:
    """Run ``cmd``, printing each output line as it comes; return the whole output.

    ``progress`` names a bar (an ipywidgets one in Jupyter) that counts output lines and time,
    for the long steps such as ``terraform apply``.
    """
    from tqdm.auto import tqdm

    if echo:
        print(f"$ {cmd}", flush=True)
    bar = tqdm(desc=progress, unit=" lines") if progress else None
    started = time.monotonic()
    process = subprocess.Popen(
        cmd.argv, cwd=cmd.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    lines: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            for secret in cmd.secrets:
                line = line.replace(secret, "****")
            lines.append(line)
            if bar is not None:
                bar.update(1)
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        reader.join(timeout=5)
        if bar is not None:
            bar.close()
        raise CommandFailed(f"`{cmd}` ran past {timeout:g} s and was stopped.\n{''.join(lines[-20:])}") from None
    reader.join(timeout=5)
    if bar is not None:
        bar.close()
    if process.returncode != 0:
        raise CommandFailed(
            f"`{cmd}` failed (exit {process.returncode}) after {time.monotonic() - started:.0f} s.\n"
            + "".join(lines[-20:])
        )
    return "".join(lines)


class Background:
    """A command left running while later cells use it (``kubectl port-forward``).

    Started at once and waited for until ``ready()`` is true, at most ``timeout`` seconds, with a
    clear message if it stops or never answers. Stopped by ``stop()`` and at exit. When a later
    notebook cell fails it is stopped too, so a notebook left after a failure holds no port, and
    started again before the next cell runs, so fixing the cell and running it again just works.
    """

    def __init__(
        self, cmd: Command, ready: Callable[[], bool], *, timeout: float = 60, hint: str = "", url: str = ""
    ):
        self.cmd, self._ready, self._timeout, self._hint = cmd, ready, timeout, hint
        self.url = url  # where it serves, for one that does (a port-forward)
        self._output = tempfile.TemporaryFile()  # noqa: SIM115 (the service's log for its whole life, across restarts)
        self._halted = False
        self._start()
        atexit.register(self.stop)
        shell = _ipython()
        if shell is not None:
            shell.events.register("post_run_cell", self._after_cell)
            shell.events.register("pre_run_cell", self._before_cell)

    def _start(self) -> None:
        print(f"$ {self.cmd} &", flush=True)
        self.process = subprocess.Popen(
            self.cmd.argv, cwd=self.cmd.cwd, stdout=self._output, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + self._timeout
        while not self._ready():
            exited = self.process.poll()
            if exited is not None or time.monotonic() > deadline:
                why = f"stopped (exit {exited})" if exited is not None else f"did not answer within {self._timeout:g} s"
                said = self.output()
                self.stop()
                raise CommandFailed(f"`{self.cmd}` {why}. {self._hint}\n{said}".rstrip())
            time.sleep(0.2)

    def output(self) -> str:
        """What the command printed so far (its last lines), secrets masked."""
        self._output.seek(0)
        text = self._output.read().decode(errors="replace")
        for secret in self.cmd.secrets:
            text = text.replace(secret, "****")
        return "".join(text.splitlines(keepends=True)[-20:])

    def stop(self) -> None:
        """Stop it for good."""
        self._halt()
        self._halted = False
        shell = _ipython()
        if shell is not None:
            for event, callback in (("post_run_cell", self._after_cell), ("pre_run_cell", self._before_cell)):
                if callback in shell.events.callbacks[event]:
                    shell.events.unregister(event, callback)

    def _halt(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def _after_cell(self, result: object) -> None:
        if not getattr(result, "success", True) and self.process.poll() is None:
            print(f"A cell failed: `{self.cmd}` is stopped; it starts again with the next cell you run.")
            self._halt()
            self._halted = True

    def _before_cell(self, info: object) -> None:
        if self._halted:
            self._halted = False
            try:
                self._start()
            except CommandFailed as failed:
                print(failed)


def _ipython() -> Any:
    """The running IPython shell (a notebook kernel), if any."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()
