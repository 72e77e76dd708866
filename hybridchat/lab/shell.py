"""Run a workshop command from a notebook: output streamed as it comes, a timeout, secrets masked."""

from __future__ import annotations

import shlex
import subprocess
import sys
import threading
import time
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
