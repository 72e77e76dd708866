"""Make the exercises from the solutions: ``python -m hybridchat.lab.make_exercises``.

In ``notebooks/*.ipynb``, learner code sits between ``### BEGIN SOLUTION`` and
``### END SOLUTION`` (nbgrader's convention). Each such region becomes a ``# TODO`` and
``raise NotImplementedError()`` in ``notebooks/exercises/``. The learner's package is written by
the notebooks' ``%%write_module my_app/MODULE.py`` cells (``hybridchat.lab.cells``): the first
cell that writes each module gives its exercise form too, in ``notebooks/exercises/package/``
(beside its ``__init__.py``),
which ``make lab`` copies to ``workspace/my_app``. In ``infra/*.tf`` the blocks learners write
are marked the same way (HCL comments): their exercise form, in ``notebooks/exercises/infra/``,
leaves out each region and keeps the ``# TODO`` comment above it. ``--check`` only reports whether
the exercises are up to date.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
INFRA = NOTEBOOKS.parent / "infra"  # the Terraform, complete: the instructor's reference
PACKAGE = NOTEBOOKS / "exercises" / "package"  # the learner's package in exercise form
INFRA_EXERCISE = NOTEBOOKS / "exercises" / "infra"  # infra/'s files that have regions, in exercise form
# A cell that writes a module of the learner's package (relative to the notebook: its folder's my_app/).
WRITES_MODULE = re.compile(r"%%write_module[ \t]+my_app/(\w+\.py)[ \t]*\n")


def strip_solutions(
    source: str, where: str = "cell", todo: str | None = "see the explanation above"
) -> str:
    """``source`` with each solution region replaced by a stub that raises (Python), or left
    out (``todo=None``: Terraform, whose ``# TODO`` comment above the region says what goes there)."""
    kept: list[str] = []
    indent: str | None = None
    for number, line in enumerate(source.splitlines(), 1):
        marker = line.strip()
        if marker == BEGIN:
            if indent is not None:
                raise ValueError(f"{where}, line {number}: {BEGIN} inside another solution")
            indent = line[: len(line) - len(line.lstrip())]
            if todo is not None:
                kept += [f"{indent}# TODO: your code here ({todo})", f"{indent}raise NotImplementedError()"]
        elif marker == END:
            if indent is None:
                raise ValueError(f"{where}, line {number}: {END} without {BEGIN}")
            indent = None
        elif indent is None:
            kept.append(line)
    if indent is not None:
        raise ValueError(f"{where}: {BEGIN} is never closed")
    return "\n".join(kept)


def exercise_of(solution: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode | None:
    """The exercise form of a notebook, or None when it has nothing for learners to write."""
    if not any(BEGIN in cell.source for cell in solution.cells if cell.cell_type == "code"):
        return None
    exercise: nbformat.NotebookNode = nbformat.from_dict(solution)
    for index, cell in enumerate(exercise.cells):
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source, f"{name}, cell {index}")
            cell.outputs, cell.execution_count = [], None
    return exercise


def package_modules(notebooks: Path = NOTEBOOKS) -> dict[str, tuple[str, str]]:
    """Each module of the learner's package (``translators.py``): the solution notebook that
    first writes it, and the text its cell writes, solution regions marked."""
    modules: dict[str, tuple[str, str]] = {}
    for path in sorted(notebooks.glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            found = WRITES_MODULE.match(cell.source) if cell.cell_type == "code" else None
            if found and found.group(1) not in modules:
                modules[found.group(1)] = (path.name, cell.source[found.end():].rstrip("\n") + "\n")
    return modules


def solutions(notebooks: Path = NOTEBOOKS) -> dict[str, str]:
    """Each module of the learner's package as the solution notebooks write it (no markers)."""
    return {
        module: "".join(line for line in text.splitlines(keepends=True) if line.strip() not in (BEGIN, END))
        for module, (_, text) in package_modules(notebooks).items()
    }


def build(notebooks: Path = NOTEBOOKS) -> dict[Path, str]:
    """Every exercise notebook's and package module's path and text."""
    built = {}
    for path in sorted(notebooks.glob("*.ipynb")):
        exercise = exercise_of(nbformat.read(path, as_version=4), path.name)
        if exercise is not None:
            built[notebooks / "exercises" / path.name] = nbformat.writes(exercise) + "\n"
    for module, (name, text) in package_modules(notebooks).items():
        todo = f"notebook {name[:2]} explains it"
        built[notebooks / "exercises" / "package" / module] = strip_solutions(text, f"{name}, {module}", todo) + "\n"
    for path in sorted((notebooks.parent / "infra").glob("*.tf")):
        if BEGIN in (text := path.read_text()):
            stripped = strip_solutions(text, f"infra/{path.name}", todo=None)
            built[notebooks / "exercises" / "infra" / path.name] = stripped + "\n"
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that notebooks/exercises/ is up to date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in build().items():
        if not path.exists() or path.read_text() != text:
            stale.append(path)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    for path in stale:
        print(f"{'out of date' if args.check else 'wrote'}: {path.relative_to(NOTEBOOKS.parent)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
