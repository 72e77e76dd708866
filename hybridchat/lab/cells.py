"""``%%write_module my_app/MODULE.py``: a notebook cell that becomes a module of the learner's
package, as IPython's ``%%writefile`` makes a file, without ever losing the learner's code.

* A cell whose function is still its TODO stub (``raise NotImplementedError()``) writes nothing
  over a module where that function is written: "Run All" on a notebook not done yet keeps the
  translators written in 03, or put in by ``hybridchat lab --solutions``.
* Code replaced by different code is kept first, in ``backup-TIME/my_app/`` in the workspace
  (as ``--solutions`` and ``--reset`` keep theirs).

Notebooks load it with ``%load_ext hybridchat.lab.cells``.
"""

from __future__ import annotations

import ast
import shutil
import time
from pathlib import Path
from typing import Any


def _functions(code: str) -> dict[str, bool] | None:
    """Each top-level function of ``code``, and whether it is still a TODO stub; None when the
    code does not parse (a learner's code being written: the app says where it breaks)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    return {
        node.name: any(isinstance(n, ast.Raise) and "NotImplementedError" in ast.unparse(n) for n in ast.walk(node))
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
    }


def write_module(target: Path, code: str) -> str:
    """Write ``code`` to ``target`` unless that would put a stub over written code; what was done."""
    old = target.read_text() if target.exists() else None
    if old == code:
        return f"{target} is as this cell has it already."
    before, after = _functions(old or ""), _functions(code)
    written_before = {name for name, stub in (before or {}).items() if not stub}
    still_stubs = [name for name, stub in (after or {}).items() if stub and name in written_before]
    if still_stubs:
        names = " and ".join(f"`{name}`" for name in still_stubs)
        are, it = ("is still its TODO", "it") if len(still_stubs) == 1 else ("are still their TODOs", "them")
        return (f"⚠️ Not written: {names} in this cell {are}, and {target} has your code for {it}, kept as it is "
                "(the checks below check that). Write yours here to replace it.")
    said = f"Writing {target}" if old is None else f"Overwriting {target}"
    if old is not None and written_before:
        workspace = target.resolve().parent.parent
        backup = workspace / f"backup-{time.strftime('%Y%m%d-%H%M%S')}" / target.resolve().parent.name
        backup.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target, backup / target.name)
        said += f"; the version it replaces is in {backup.relative_to(workspace) / target.name}"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(code)
    return said


def load_ipython_extension(ipython: Any) -> None:
    def cell_magic(line: str, cell: str) -> None:
        print(write_module(Path(line.strip()), cell))

    ipython.register_magic_function(cell_magic, magic_kind="cell", magic_name="write_module")
