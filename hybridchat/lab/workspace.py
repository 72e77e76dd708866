"""The learner's workspace: copies of the notebooks to work in, so the tracked ones stay the workshop's.

``hybridchat lab`` (``make lab``) copies each numbered notebook into ``workspace/`` (git-ignored)
once — the exercise form where there is one, the notebook itself to read along otherwise — and
the learner's package, ``workspace/my_app``, in exercise form: notebooks 03 and 04 write its
modules, and the app runs them; and the Terraform, ``workspace/infra``, with the four blocks
notebook 01 has the learner write left out: ``terraform apply`` creates what they wrote. Then it
starts JupyterLab there. A file already in the workspace is the learner's and is never replaced
(``reset`` puts one notebook back, the learner's copy kept); one the workshop adds later arrives.
``workspace/solutions`` holds the solutions, read-only, to read.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hybridchat.lab.make_exercises import INFRA, INFRA_EXERCISE, NOTEBOOKS, PACKAGE, solutions

WORKSPACE = NOTEBOOKS.parent / "workspace"
# What the solutions folder is, for whoever opens it in JupyterLab's file browser.
SOLUTIONS_README = """# The solutions, to read

Each notebook filled in, the package your notebooks write (`my_app/`) and the Terraform
(`infra/`), as the workshop gives them. Read-only: nothing done here changes them, and
`make lab` writes them anew.

Open one when a checker's hint has not got you further, or to compare once your own cell
passes. Your own copies are one folder up, and they are what runs. To run the solutions'
package and Terraform instead (your files are backed up first): `hybridchat lab --solutions`.
"""
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
    learner_infra(workspace / "infra", notebooks, prepared)
    put_reference(workspace, notebooks)
    return prepared


def reset(workspace: Path, name: str, notebooks: Path = NOTEBOOKS) -> Path | None:
    """Put notebook ``name`` ("05", or its file name) back as the workshop gives it; the learner's
    copy is moved to a backup folder in the workspace, returned (None: there was no copy)."""
    given = {path.name: path for path in learner_notebooks(notebooks)}
    number = name.zfill(2) if name.isdigit() else name  # "3" is 03
    found = [file for file in given if file == name or file.split("_", 1)[0] == number]
    if len(found) != 1:
        raise ValueError(f"no notebook {name!r}: one of {', '.join(sorted(given))} (or its number)")
    target = workspace / found[0]
    backup = workspace / f"backup-{time.strftime('%Y%m%d-%H%M%S')}" if target.exists() else None
    if backup is not None:
        backup.mkdir(parents=True, exist_ok=True)
        shutil.move(target, backup / target.name)
    shutil.copyfile(given[found[0]], target)
    return backup


def put_reference(workspace: Path, notebooks: Path = NOTEBOOKS) -> Path:
    """The solutions, to read from JupyterLab: ``workspace/solutions`` (read-only, made anew each
    time): every notebook in its solution form, the package's modules and the Terraform."""
    folder = workspace / "solutions"
    if folder.exists():
        for path in folder.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(folder)
    files = {path.name: path.read_text() for path in sorted(notebooks.glob("[0-9]*.ipynb"))}
    files |= {f"my_app/{module}": text for module, text in solutions(notebooks).items()}
    files |= {f"infra/{path.name}": path.read_text() for path in sorted((notebooks.parent / INFRA.name).glob("*.tf"))}
    files["README.md"] = SOLUTIONS_README
    for relative, text in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)
        (folder / relative).chmod(0o444)
    for directory in (folder / "my_app", folder / "infra", folder):
        directory.chmod(0o555)
    return folder


def learner_package(
    folder: Path = Path("my_app"), notebooks: Path = NOTEBOOKS, prepared: Prepared | None = None
) -> Path:
    """The learner's package, made in exercise form where a file is missing (a notebook calls
    it for ``my_app`` beside itself: a workspace anywhere has its own); its whole path."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in sorted((notebooks / PACKAGE.relative_to(NOTEBOOKS)).glob("*.py")):
        _copy_once(source, folder / source.name, prepared or Prepared())
    return folder.resolve()


def learner_infra(folder: Path = Path("infra"), notebooks: Path = NOTEBOOKS, prepared: Prepared | None = None) -> Path:
    """The learner's Terraform: each of ``infra/*.tf``, in its exercise form where it has one,
    made where missing (notebook 01 calls it for ``infra`` beside itself); its whole path."""
    folder.mkdir(parents=True, exist_ok=True)
    exercises = notebooks / INFRA_EXERCISE.relative_to(NOTEBOOKS)
    for source in sorted((notebooks.parent / INFRA.name).glob("*.tf")):
        exercise = exercises / source.name
        _copy_once(exercise if exercise.exists() else source, folder / source.name, prepared or Prepared())
    return folder.resolve()


def _copy_once(source: Path, target: Path, prepared: Prepared) -> None:
    if target.exists():
        prepared.kept.append(target)
    else:
        shutil.copyfile(source, target)
        prepared.copied.append(target)


def put_solutions(workspace: Path, notebooks: Path = NOTEBOOKS) -> Path | None:
    """Write the solutions into a learner's workspace (for someone stuck, or a demo): the
    package's modules and the Terraform with its blocks. The learner's files are first copied
    to a backup folder in the workspace, returned."""
    written = {Path("my_app") / module: text for module, text in solutions(notebooks).items()}
    infra = notebooks.parent / INFRA.name
    written |= {Path("infra") / path.name: path.read_text() for path in sorted(infra.glob("*.tf"))}
    mine = [path for path in written if (workspace / path).exists()]
    backup = workspace / f"backup-{time.strftime('%Y%m%d-%H%M%S')}" if mine else None
    for path in mine:
        assert backup is not None
        (backup / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(workspace / path, backup / path)
    learner_package(workspace / "my_app", notebooks)
    learner_infra(workspace / "infra", notebooks)
    for path, text in written.items():
        (workspace / path).write_text(text)
    return backup


def jupyter_lab_argv(
    workspace: Path, *, ip: str, port: int, open_browser: bool, behind_proxy: bool = False
) -> list[str]:
    """The command that serves JupyterLab on ``workspace``, with the workspace's defaults.
    ``behind_proxy``: reached through Cloud Shell's Web Preview, whose requests name its own host
    (``8080-cs-….cloudshell.dev``), which JupyterLab refuses on a loopback address unless told."""
    settings = workspace / ".jupyterlab"
    settings.mkdir(exist_ok=True)
    (settings / "overrides.json").write_text(json.dumps(_OVERRIDES, indent=2) + "\n")
    argv = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={workspace}", f"--ServerApp.ip={ip}",
            f"--ServerApp.port={port}",
            f"--LabApp.app_settings_dir={settings}", f"--ServerApp.open_browser={open_browser}"]
    if behind_proxy:
        argv.append("--ServerApp.allow_remote_access=True")
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # a container's user: Jupyter refuses root unless told
        argv.append("--allow-root")
    return argv
