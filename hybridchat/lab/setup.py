"""Notebook 00: what this machine has, and the settings every notebook starts from."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from getpass import getpass
from importlib import metadata

from hybridchat.config import Settings
from hybridchat.lab.workshop import NO_GEMMA

TOOLS = {
    "gcloud": ("gcp", "https://cloud.google.com/sdk/docs/install (Cloud Shell has it)"),
    "terraform": ("gcp", "https://developer.hashicorp.com/terraform/install"),
    "kubectl": ("gcp", "gcloud components install kubectl"),
    # kubectl reaches GKE only through it: without it, notebook 02's first kubectl fails.
    "gke-gcloud-auth-plugin": ("gcp", "gcloud components install gke-gcloud-auth-plugin"),
    "skaffold": ("gcp", "gcloud components install skaffold"),
    "java": ("tests", "a JDK 17 (Firestore emulator, for the test suite only)"),
}
PACKAGES = (
    "gradio", "google-genai", "google-cloud-firestore", "requests", "openai", "transformers", "torch", "ipywidgets",
    "papermill",
)


def _version(tool: str, path: str) -> str:
    flag = {"terraform": "version", "kubectl": "version --client", "java": "-version"}.get(tool, "--version")
    try:
        done = subprocess.run([path, *flag.split()], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "installed"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "installed"


def check_environment(mode: str = "local") -> list[dict[str, str]]:
    """A row per tool and package: found (with its version) or missing, and how to get it."""
    rows = [{"what": "python", "status": platform.python_version(), "needed for": "everything", "how to get it": ""}]
    for tool, (needed_for, how) in TOOLS.items():
        path = shutil.which(tool)
        status = _version(tool, path) if path else "MISSING"
        required = needed_for == "gcp" and mode == "gcp"
        rows.append({"what": tool, "status": status, "needed for": needed_for + (" (now)" if required else ""),
                     "how to get it": "" if path else how})
    for package in PACKAGES:
        try:
            status = metadata.version(package)
        except metadata.PackageNotFoundError:
            status = "MISSING"
        how = "" if status != "MISSING" else "make setup (or pip install -e '.[local,notebooks]')"
        rows.append({"what": package, "status": status, "needed for": "the notebooks", "how to get it": how})
    return rows


def missing(rows: list[dict[str, str]], mode: str) -> list[str]:
    """What this mode cannot do without."""
    needed = [row for row in rows if row["needed for"].endswith("(now)") or row["needed for"] == "the notebooks"]
    return [row["what"] for row in needed if row["status"] == "MISSING"]


def configure(mode: str, project_id: str = "", region: str = "us-central1", gemma_url: str = "") -> Settings:
    """Point this notebook's hybridchat at the local stand-ins or at the project, and at the room's
    Gemma if ``gemma_url`` names one (its key from ``HYBRIDCHAT_VLLM_API_KEY``, else asked, never
    shown); return the settings."""
    if mode not in ("local", "gcp"):
        raise ValueError(f"MODE must be 'local' or 'gcp', not {mode!r}")
    os.environ["HYBRIDCHAT_MODE"] = mode
    if project_id:
        os.environ["GOOGLE_CLOUD_PROJECT"] = project_id
    if mode == "gcp" and not project_id:
        raise ValueError("set PROJECT_ID in the parameters cell for MODE='gcp'")
    if gemma_url and gemma_url != NO_GEMMA:
        os.environ["HYBRIDCHAT_VLLM_URL"] = gemma_url
        if "HYBRIDCHAT_VLLM_API_KEY" not in os.environ:
            os.environ["HYBRIDCHAT_VLLM_API_KEY"] = getpass("The room's Gemma key (from your instructor): ")
    return Settings()
