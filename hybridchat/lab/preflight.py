"""Notebook 00 (gcp): what most often breaks a real workshop, checked before anything is created.

Each check reads only (gcloud, one Hugging Face metadata request) and says ✅ or what to do:
logged in, application-default credentials, the project, billing, the APIs needed before
Terraform can enable the rest, the region's L4 GPU quota against what the Gemma manifest asks,
and a Hugging Face token with access to Gemma.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from hybridchat.lab.gcp import DEPLOY, active_account
from hybridchat.lab.shell import CommandFailed, ShownAlone
from hybridchat.lab.workshop import DEFAULTS, GEMMAS, gemma_manifest

# Terraform enables the workshop's other APIs (infra/main.tf); these must be on before it runs:
# Service Usage to enable anything, Compute Engine for the GPU quota and the cluster's nodes.
NEEDED_FIRST = ("serviceusage.googleapis.com", "compute.googleapis.com")
GPU_QUOTA = "NVIDIA_L4_GPUS"  # per region
ALL_GPUS_QUOTA = "GPUS_ALL_REGIONS"  # per project


class PreflightFailed(ShownAlone, RuntimeError):
    """Some checks failed; nothing was created. The message lists what to do."""


@dataclass(frozen=True)
class Result:
    ok: bool
    check: str
    detail: str


def gemma_needs(manifest: str = GEMMAS[DEFAULTS["GEMMA"]]) -> tuple[str, int]:
    """The Hugging Face repository, and the GPUs a Gemma manifest asks for in all (each
    replica's ``nvidia.com/gpu``)."""
    documents = yaml.safe_load_all((DEPLOY / manifest).read_text())
    deployment = next(d for d in documents if d and d["kind"] == "Deployment")
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    model = next(a.partition("=")[2] for a in server["args"] if a.startswith("--model="))
    per_pod = int(server["resources"]["requests"]["nvidia.com/gpu"])
    return model, per_pod * int(deployment["spec"].get("replicas", 1))


def _gcloud(*argv: str) -> str:
    """gcloud's standard output (its warnings go to standard error and are not parsed)."""
    done = subprocess.run(["gcloud", *argv], capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise CommandFailed(done.stderr.strip())
    return done.stdout.strip()


def account() -> Result:
    try:
        active = _gcloud(*active_account().argv[1:])
    except CommandFailed:
        active = ""
    if "@" in active:  # logged out, gcloud prints nothing here (and a warning on stderr)
        return Result(True, "gcloud account", active.splitlines()[0])
    return Result(False, "gcloud account", "not logged in: run `gcloud auth login`")


def application_default_credentials() -> Result:
    try:
        _gcloud("auth", "application-default", "print-access-token")
    except CommandFailed:
        return Result(False, "application-default credentials",
                      "none: run `gcloud auth application-default login` (this notebook's Gemini calls use them)")
    return Result(True, "application-default credentials", "found")


def project(project_id: str) -> Result:
    try:
        number = _gcloud("projects", "describe", project_id, "--format=value(projectNumber)")
    except CommandFailed:
        return Result(
            False, "project", f"{project_id!r} does not exist or this account cannot see it: check PROJECT_ID"
        )
    return Result(True, "project", f"{project_id} (number {number})")


def billing(project_id: str) -> Result:
    try:
        enabled = _gcloud("billing", "projects", "describe", project_id, "--format=value(billingEnabled)")
    except CommandFailed:
        enabled = ""
    if enabled.lower() == "true":
        return Result(True, "billing", "enabled")
    return Result(False, "billing", "not enabled: link a billing account at "
                  f"https://console.cloud.google.com/billing/linkedaccount?project={project_id}")


def apis(project_id: str) -> Result:
    try:
        listed = _gcloud("services", "list", "--enabled", f"--project={project_id}", "--format=value(config.name)")
        enabled = set(listed.split())
    except CommandFailed:
        enabled = set()
    missing = [api for api in NEEDED_FIRST if api not in enabled]
    if missing:
        return Result(False, "APIs", f"not enabled: {', '.join(missing)}: run "
                      f"`gcloud services enable {' '.join(missing)} --project={project_id}`")
    return Result(True, "APIs", f"{', '.join(NEEDED_FIRST)} enabled (Terraform enables the rest)")


def gpu_quota(project_id: str, region: str, manifest: str) -> Result:
    """The region's L4 quota and the project's GPUs in all regions (often 0 on a new project)."""
    _, needed = gemma_needs(manifest)
    try:
        project, as_json = f"--project={project_id}", "--format=json"
        regional = json.loads(_gcloud("compute", "regions", "describe", region, project, as_json))
        everywhere = json.loads(_gcloud("compute", "project-info", "describe", project, as_json))
    except (CommandFailed, ValueError):
        return Result(False, "L4 GPU quota", f"cannot read {region}'s quotas: is the Compute Engine API on?")
    free = {metric: _free(found, metric) for found, metric in ((regional, GPU_QUOTA), (everywhere, ALL_GPUS_QUOTA))}
    said = f"{free[GPU_QUOTA]} L4 free in {region}, {free[ALL_GPUS_QUOTA]} GPUs in all regions; Gemma needs {needed}"
    short = [metric for metric, count in free.items() if count < needed]
    if not short:
        return Result(True, "L4 GPU quota", said)
    quotas = f"https://console.cloud.google.com/iam-admin/quotas?project={project_id}"
    return Result(False, "L4 GPU quota", f"{said}: ask for more ({', '.join(short)}) at {quotas}, or choose a REGION "
                  "with L4s")


def _free(described: dict[str, Any], metric: str) -> int:
    quota = next((q for q in described.get("quotas", []) if q.get("metric") == metric), None)
    return 0 if quota is None else int(quota["limit"] - quota.get("usage", 0))


def hugging_face(token: str, manifest: str) -> Result:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    repo, _ = gemma_needs(manifest)
    if not token:
        return Result(False, "Hugging Face token", "missing: create one (read access) at https://huggingface.co/settings/tokens")
    try:
        # HF_ENDPOINT read now, not when huggingface_hub was imported (a mirror, or a test's hub).
        HfApi(endpoint=os.environ.get("HF_ENDPOINT")).auth_check(repo, token=token)
    except GatedRepoError:
        return Result(False, "Hugging Face token", f"no access to {repo}: accept its licence at https://huggingface.co/{repo}")
    except HfHubHTTPError as failed:
        status = failed.response.status_code if failed.response is not None else None
        why = "not a valid token" if status == 401 else f"Hugging Face answered HTTP {status}"
        return Result(False, "Hugging Face token", f"{why}: check it at https://huggingface.co/settings/tokens")
    except Exception as failed:
        return Result(False, "Hugging Face token", f"could not reach Hugging Face ({type(failed).__name__})")
    return Result(True, "Hugging Face token", f"has access to {repo}")


def preflight(project_id: str, region: str, token: str | None, gemma: str = DEFAULTS["GEMMA"]) -> list[Result]:
    """Run every check, print one line each; ``PreflightFailed`` if any failed. Logged out, the
    project's checks cannot run: only the login and the token are reported. Without a ``token``
    (the room's Gemma serves this attendee), neither GPUs nor Gemma's weights are needed; with
    one, the checks are for the Gemma ``gemma`` names (a key of ``workshop.GEMMAS``)."""
    logged_in = account()
    manifest = gemma_manifest(gemma)
    own_gemma: list[Callable[[], Result]] = [] if token is None else [lambda: gpu_quota(project_id, region, manifest)]
    project_checks: list[Callable[[], Result]] = [
        application_default_credentials,
        lambda: project(project_id),
        lambda: billing(project_id),
        lambda: apis(project_id),
        *own_gemma,
    ]
    results = []
    checks: list[Callable[[], Result]] = [
        lambda: logged_in, *(project_checks if logged_in.ok else []),
        *([lambda: hugging_face(token, manifest)] if token is not None else []),
    ]
    if token is None:
        print("Gemma is the room's: no GPU quota and no Hugging Face token are needed in this project.")
    for check in checks:
        result = check()
        print(f"{'✅' if result.ok else '❌'} {result.check}: {result.detail}")
        results.append(result)
    failed = [r.check for r in results if not r.ok]
    if failed:
        raise PreflightFailed(f"{len(failed)} check(s) failed ({', '.join(failed)}); nothing was created. "
                              "Fix them as said above, then run this cell again.")
    return results
