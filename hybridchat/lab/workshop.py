"""The workshop's parameters, set once: notebook 00 saves them in ``workshop.json`` beside the
notebooks (the learner's workspace), and every other notebook's parameters cell reads them from
there. A line changed in a notebook's parameters cell still wins for that notebook, and so do
papermill's parameters, which it puts after that cell."""

from __future__ import annotations

import json
from pathlib import Path

from hybridchat.lab.shell import ShownAlone

FILE = "workshop.json"
DEFAULTS = {
    "MODE": "local",
    "PROJECT_ID": "",
    "REGION": "us-central1",
    "CLUSTER_NAME": "gradio-chat-cluster",
    "GEMMA_URL": "",  # a room's Gemma (the instructor's); "": each attendee's own, from notebook 02
    "GEMMA": "gemma-3-12b",  # which Gemma notebook 02 deploys: a key of GEMMAS
    "ATTENDEE": "",  # in a room: the name the instructor's progress page shows; "": no progress sent
    "ROOM_URL": "",  # the room's progress service; "": the room's Gemma address (its /progress path)
}
NO_GEMMA = "none"  # GEMMA_URL for a workshop on Gemini alone
# The Gemma each choice deploys (deploy/): the codelab's Gemma 3 12B on two L4s, or Gemma 4 E4B on one.
GEMMAS = {"gemma-3-12b": "gemma3-12b-deploy.yaml", "gemma-4-e4b": "gemma4-e4b-deploy.yaml"}


class WorkshopFileInvalid(ShownAlone, ValueError):
    """``workshop.json`` cannot be read as the workshop's parameters."""


class WrongMode(ShownAlone, RuntimeError):
    """The notebook's mode is not the one the workshop ran in, where that would mislead."""


class UnknownGemma(ShownAlone, ValueError):
    """``GEMMA`` names no Gemma the workshop deploys."""


def gemma_manifest(gemma: str) -> str:
    """The manifest in ``deploy/`` that deploys the Gemma ``gemma`` names."""
    try:
        return GEMMAS[gemma]
    except KeyError:
        raise UnknownGemma(f"GEMMA = {gemma!r} is not a Gemma the workshop deploys: choose one of "
                           f"{', '.join(map(repr, GEMMAS))}") from None


def load(folder: Path | None = None) -> dict[str, str]:
    """What notebook 00 saved in ``folder`` (the notebook's own by default); ``{}`` before it ran."""
    path = (folder or Path.cwd()) / FILE
    if not path.exists():
        return {}
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise WorkshopFileInvalid(
            f"{path.name} is not valid JSON ({exc.msg}, line {exc.lineno}): fix it, or run notebook 00 again."
        ) from None
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        raise WorkshopFileInvalid(f"{path.name} should map each parameter to a string: run notebook 00 again.")
    return {name: value for name, value in values.items() if name in DEFAULTS}


def saved(name: str, folder: Path | None = None) -> str:
    """The parameter ``name`` as notebook 00 saved it, else its default."""
    return load(folder).get(name, DEFAULTS[name])


def save(folder: Path | None = None, **parameters: str) -> Path:
    """Save the workshop's parameters for the next notebooks (notebook 00), and say so."""
    unknown = sorted(set(parameters) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"not workshop parameters: {', '.join(unknown)} (these are: {', '.join(DEFAULTS)})")
    if parameters.get("MODE", "local") not in ("local", "gcp"):
        raise ValueError(f"MODE must be 'local' or 'gcp', not {parameters['MODE']!r}")
    gemma_manifest(parameters.get("GEMMA", DEFAULTS["GEMMA"]))
    attendee = parameters.get("ATTENDEE", "")
    if "@" in attendee or len(attendee) > 60:
        raise ValueError(f"ATTENDEE is the name the room's page shows, at most 60 characters and not an e-mail "
                         f"address: {attendee[:60]!r} is not one")
    path = (folder or Path.cwd()) / FILE
    values = {**DEFAULTS, **load(folder), **parameters}
    path.write_text(json.dumps(values, indent=1) + "\n")
    shown = ", ".join(f"{name}={value!r}" for name, value in values.items())
    print(f"Saved in {path.name}, which the next notebooks read: {shown}")
    return path


def refuse_local_over_gcp(mode: str, folder: Path | None = None) -> None:
    """Stop a clean-up in ``local`` mode when the workshop ran in ``gcp`` mode: it would delete
    nothing in the project, and its resources would go on billing."""
    values = load(folder)
    if mode == "local" and values.get("MODE") == "gcp" and values.get("PROJECT_ID"):
        raise WrongMode(
            f"This notebook is in local mode, but {FILE} says the workshop ran in gcp mode on project "
            f"{values['PROJECT_ID']!r}: in local mode nothing would be deleted there, and it would go on "
            'billing. Set MODE = "gcp" in the parameters cell (or remove that line) and run again.'
        )
