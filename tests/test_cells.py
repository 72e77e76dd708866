"""``%%write_module``: the notebooks' cells that become the learner's modules never put a TODO stub
over the learner's code, and keep what they replace."""

from __future__ import annotations

import re

import nbformat
import pytest
from IPython.core.interactiveshell import InteractiveShell
from notebook_runs import NOTEBOOKS

from hybridchat.lab.make_exercises import solutions
from hybridchat.lab.workspace import prepare

ALL_NOTEBOOKS = sorted(NOTEBOOKS.glob("0*.ipynb")) + sorted((NOTEBOOKS / "exercises").glob("0*.ipynb"))


@pytest.fixture
def shell(tmp_path, monkeypatch):
    """IPython, as a notebook's kernel runs it, in a fresh workspace."""
    workspace = tmp_path / "workspace"
    prepare(workspace)
    monkeypatch.chdir(workspace)
    ipython = InteractiveShell.instance()
    ipython.run_line_magic("load_ext", "hybridchat.lab.cells")
    yield ipython
    InteractiveShell.clear_instance()


def persona_cell(folder) -> str:
    """Notebook 08's persona cell, as the learner finds it (``folder``: exercises) or fills it in."""
    notebook = nbformat.read(folder / "08_next_steps.ipynb", as_version=4)
    cell = next(c.source for c in notebook.cells if c.source.startswith("%%write_module my_app/translators.py"))
    return cell.split("\n", 1)[1]


def test_run_all_on_an_unanswered_cell_keeps_the_learners_translators(shell, tmp_path, capsys):
    mine = tmp_path / "workspace" / "my_app" / "translators.py"
    mine.write_text(solutions()["translators.py"])  # written in 03, or put in by --solutions
    shell.run_cell_magic("write_module", "my_app/translators.py", persona_cell(NOTEBOOKS / "exercises"))
    assert mine.read_text() == solutions()["translators.py"], "08's TODOs are not written over 03's code"
    said = capsys.readouterr().out
    assert "⚠️ Not written: `process_message_gemma` and `process_message_gemini` in this cell are still their TODOs" in said
    assert not list((tmp_path / "workspace").glob("backup-*")), "nothing replaced, nothing to back up"


def test_a_cell_written_over_the_learners_code_keeps_it_in_a_backup(shell, tmp_path, capsys):
    workspace = tmp_path / "workspace"
    mine = workspace / "my_app" / "translators.py"
    exercise = mine.read_text()
    shell.run_cell_magic("write_module", "my_app/translators.py", solutions()["translators.py"])
    assert mine.read_text() == solutions()["translators.py"]
    assert not list(workspace.glob("backup-*")), "the TODO stubs it replaced were nobody's code"
    capsys.readouterr()
    answered = persona_cell(NOTEBOOKS)
    shell.run_cell_magic("write_module", "my_app/translators.py", answered)
    [backup] = workspace.glob("backup-*")
    assert (backup / "my_app" / "translators.py").read_text() == solutions()["translators.py"]
    assert mine.read_text() == answered and "SYSTEM_PROMPT =" in mine.read_text()
    assert f"the version it replaces is in {backup.name}/my_app/translators.py" in capsys.readouterr().out
    shell.run_cell_magic("write_module", "my_app/translators.py", answered)
    assert len(list(workspace.glob("backup-*"))) == 1, "the same code again replaces nothing"
    assert exercise != answered


def test_no_notebook_writes_the_learners_package_but_through_write_module():
    for path in ALL_NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
        assert not any(re.search(r"%%writefile\s+\S*my_app/", source) for source in code), (
            f"{path.name}: %%writefile would put a cell's TODO stubs over the learner's module")
        writes = [source for source in code if source.startswith("%%write_module")]
        if writes:
            loads = next(i for i, s in enumerate(code) if "%load_ext hybridchat.lab.cells" in s)
            assert loads < code.index(writes[0]), f"{path.name} loads %%write_module before its first use"
