"""The learner's workspace: copies of the notebooks to work in, so the tracked ones stay the workshop's.

``hybridchat lab`` (``make lab``) copies each numbered notebook into ``workspace/`` (git-ignored)
once — the exercise form where there is one, the notebook itself to read along otherwise — and
the learner's package, ``workspace/my_app``, in exercise form: notebooks 03 and 04 write its
modules, and the app runs them. Then it starts JupyterLab there. A file already in the
workspace is the learner's and is never replaced; one the workshop adds later arrives.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hybridchat.lab.make_exercises import NOTEBOOKS, PACKAGE, solutions

WORKSPACE = NOTEBOOKS.parent / "workspace"
# JupyterLab's defaults for the workspace: no prompt to fetch Jupyter's news from the internet.
_OVERRIDES = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}}


@dataclass
class Prepared:
    """What ``prepare`` did: the files it copied, and those it left as the learner has them."""

    copied: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


def learner_notebooks(notebooks: Path = NOTEBOOKS) -> list[Path]:
    """The notebooks a learner works in, in order: each one's exercise form where there is one."""
    return [
        exercise if (exercise := notebooks / "exercises" / path.name).exists() else path
        for path in sorted(notebooks.glob("[0-9]*.ipynb"))
    ]


def prepare(workspace: Path = WORKSPACE, notebooks: Path = NOTEBOOKS) -> Prepared:
    """Copy into ``workspace`` the learner notebooks and package files not there yet (one added
    to the workshop later arrives too); the ones there already are left as they are."""
    workspace.mkdir(parents=True, exist_ok=True)
    prepared = Prepared()
    for source in learner_notebooks(notebooks):
        _copy_once(source, workspace / source.name, prepared)
    learner_package(workspace / "my_app", notebooks, prepared)
    return prepared


def learner_package(
    folder: Path = Path("my_app"), notebooks: Path = NOTEBOOKS, prepared: Prepared | None = None
) -> Path:
    """The learner's package, made in exercise form where a file is missing (a notebook calls
    it for ``my_app`` beside itself: a workspace anywhere has its own); its whole path."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in sorted((notebooks / PACKAGE.relative_to(NOTEBOOKS)).glob("*.py")):
        _copy_once(source, folder / source.name, prepared or Prepared())
    return folder.resolve()


def _copy_once(source: Path, target: Path, prepared: Prepared) -> None:
    if target.exists():
        prepared.kept.append(target)
    else:
        shutil.copyfile(source, target)
        prepared.copied.append(target)


def put_solutions(folder: Path, notebooks: Path = NOTEBOOKS) -> Path | None:
    """Write the solution modules into the learner's package ``folder`` (for someone stuck, or
    a demo); the learner's files are first moved to a backup folder beside it, returned."""
    backup = None
    written = solutions(notebooks)
    mine = [folder / module for module in written if (folder / module).exists()]
    if mine:
        backup = folder.with_name(f"{folder.name}.backup-{time.strftime('%Y%m%d-%H%M%S')}")
        backup.mkdir(parents=True)
        for path in mine:
            shutil.copy2(path, backup / path.name)
    learner_package(folder, notebooks)
    for module, text in written.items():
        (folder / module).write_text(text)
    return backup


def jupyter_lab_argv(workspace: Path, *, ip: str, port: int, open_browser: bool) -> list[str]:
    """The command that serves JupyterLab on ``workspace``, with the workspace's defaults."""
    settings = workspace / ".jupyterlab"
    settings.mkdir(exist_ok=True)
    (settings / "overrides.json").write_text(json.dumps(_OVERRIDES, indent=2) + "\n")
    argv = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={workspace}", f"--ServerApp.ip={ip}",
            f"--ServerApp.port={port}",
            f"--LabApp.app_settings_dir={settings}", f"--ServerApp.open_browser={open_browser}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # a container's user: Jupyter refuses root unless told
        argv.append("--allow-root")
    return argv
