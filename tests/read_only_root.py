"""Run a Python module as in the app's container: every path outside one directory read-only.

    python read_only_root.py WRITABLE_DIR REPORT_FILE MODULE [ARGS...]

An audit hook refuses each write elsewhere (open for writing, mkdir, rename, remove, a SQLite
file, ...) with the error a read-only filesystem gives, and notes it in REPORT_FILE. Writes
made by compiled extensions outside Python's I/O are not seen.
"""

from __future__ import annotations

import errno
import os
import runpy
import sys
from pathlib import Path

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
PATH_EVENTS = {"os.mkdir", "os.remove", "os.rmdir", "os.truncate", "os.utime", "os.chmod", "os.chown", "sqlite3.connect"}


def written(event: str, args: tuple) -> list:
    if event == "open":
        return [args[0]] if args[2] & WRITE_FLAGS else []
    if event in PATH_EVENTS:
        return [args[0]]
    if event == "os.rename":
        return list(args[:2])
    if event in ("os.link", "os.symlink"):
        return [args[1]]
    return []


def refuse_writes_outside(writable: Path, report: int):  # type: ignore[no-untyped-def]
    def hook(event: str, args: tuple) -> None:
        for path in written(event, args):
            if isinstance(path, int) or str(path) in (":memory:", "") or os.fsdecode(path) == os.devnull:
                continue
            resolved = Path(os.fsdecode(path)).resolve()
            if resolved != writable and writable not in resolved.parents:
                os.write(report, f"{event} {resolved}\n".encode())
                raise PermissionError(errno.EROFS, "Read-only file system", str(resolved))

    return hook


if __name__ == "__main__":
    report = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    sys.addaudithook(refuse_writes_outside(Path(sys.argv[1]).resolve(), report))
    sys.argv = sys.argv[3:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
