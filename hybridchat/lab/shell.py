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
    clear message if it stops or never answers. Stopped by ``stop()``, at exit, and also when a
    later notebook cell fails, so a failed checker does not leave it holding its port.
    """

    def __init__(self, cmd: Command, ready: Callable[[], bool], *, timeout: float = 60, hint: str = ""):
        self.cmd = cmd
        print(f"$ {cmd} &", flush=True)
        self._output = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            cmd.argv, cwd=cmd.cwd, stdout=self._output, stderr=subprocess.STDOUT, start_new_session=True
        )
        atexit.register(self.stop)
        self._watch_cells()
        deadline = time.monotonic() + timeout
        while not ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                exited = self.process.poll()
                why = f"stopped (exit {exited})" if exited is not None else f"did not answer within {timeout:g} s"
                said = self.output()
                self.stop()
                raise CommandFailed(f"`{cmd}` {why}. {hint}\n{said}".rstrip())
            time.sleep(0.2)

    def output(self) -> str:
        """What the command printed so far (its last lines), secrets masked."""
        self._output.seek(0)
        text = self._output.read().decode(errors="replace")
        for secret in self.cmd.secrets:
            text = text.replace(secret, "****")
        return "".join(text.splitlines(keepends=True)[-20:])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._unwatch_cells()

    def _watch_cells(self) -> None:
        shell = _ipython()
        if shell is not None:
            shell.events.register("post_run_cell", self._after_cell)

    def _unwatch_cells(self) -> None:
        shell = _ipython()
        if shell is not None and self._after_cell in shell.events.callbacks["post_run_cell"]:
            shell.events.unregister("post_run_cell", self._after_cell)

    def _after_cell(self, result: object) -> None:
        if not getattr(result, "success", True):
            print(f"A cell failed: stopping `{self.cmd}`.")
            self.stop()


def _ipython():  # type: ignore[no-untyped-def]
    """The running IPython shell (a notebook kernel), if any."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()
