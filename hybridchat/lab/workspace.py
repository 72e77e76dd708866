"""The learner's workspace: copies of the notebooks to work in, so the tracked ones stay the workshop's.

``hybridchat lab`` (``make lab``) copies each numbered notebook into ``workspace/`` (git-ignored)
once — the exercise form where there is one, the notebook itself to read along otherwise — and
starts JupyterLab there. A copy already in the workspace is the learner's and is never replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hybridchat.lab.make_exercises import NOTEBOOKS

WORKSPACE = NOTEBOOKS.parent / "workspace"
# JupyterLab's defaults for the workspace: no prompt to fetch Jupyter's news from the internet.
_OVERRIDES = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}}


@dataclass
class Prepared:
    """What ``prepare`` did: the notebooks it copied, and those it left as the learner has them."""

    copied: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


def learner_notebooks(notebooks: Path = NOTEBOOKS) -> list[Path]:
    """The notebooks a learner works in, in order: each one's exercise form where there is one."""
    return [
        exercise if (exercise := notebooks / "exercises" / path.name).exists() else path
        for path in sorted(notebooks.glob("[0-9]*.ipynb"))
    ]


def prepare(workspace: Path = WORKSPACE, notebooks: Path = NOTEBOOKS) -> Prepared:
    """Copy into ``workspace`` the learner notebooks not there yet (a notebook added to the
    workshop later arrives too); the ones there already are left as they are."""
    workspace.mkdir(parents=True, exist_ok=True)
    prepared = Prepared()
    for source in learner_notebooks(notebooks):
        target = workspace / source.name
        if target.exists():
            prepared.kept.append(target)
        else:
            shutil.copyfile(source, target)
            prepared.copied.append(target)
    return prepared


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
