"""The workshop's Terraform: show what ``infra/`` creates, write its variables, run its commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hybridchat.lab.shell import Command, command

INFRA = Path(__file__).resolve().parents[2] / "infra"
# What a learner should notice about each kind of resource.
_KEY_ATTRIBUTES = {
    "google_project_service": ("service", "disable_on_destroy"),
    "google_container_cluster": ("name", "location", "enable_autopilot", "deletion_protection"),
    "google_firestore_database": ("name", "location_id", "type"),
    "google_firestore_document": ("collection", "document_id"),
    "google_artifact_registry_repository": ("repository_id", "format", "location"),
    "google_project_iam_member": ("role", "member"),
    "google_iap_web_iam_member": ("role", "member", "for_each"),
    "google_compute_global_address": ("name",),
    "google_compute_managed_ssl_certificate": ("name",),
}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items() if k not in ("__is_block__", "__comments__")}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse(path: Path) -> dict[str, Any]:
    """One ``.tf`` file as python-hcl2 reads it, without its quoting of strings and labels."""
    import hcl2

    with path.open() as handle:
        parsed: dict[str, Any] = _plain(hcl2.load(handle))
        return parsed


def resources(infra: Path = INFRA) -> list[dict[str, object]]:
    """One row per resource in ``infra/*.tf``: its Terraform address and key attributes (an
    attribute called ``name`` or ``type`` shows beside the address, not in its place)."""
    rows = []
    for path in sorted(infra.glob("*.tf")):
        for block in parse(path).get("resource", []):
            for kind, named in block.items():
                for label, body in named.items():
                    shown = {key: body[key] for key in _KEY_ATTRIBUTES.get(kind, ()) if key in body}
                    rows.append({"file": path.name, "resource": f"{kind}.{label}", **shown})
    return rows


def write_tfvars(project_id: str, project_number: str, region: str, cluster_name: str,
                 iap_members: list[str] | tuple[str, ...] = (), infra: Path = INFRA) -> Path:
    """``infra/terraform.tfvars`` with this project's values (git ignores it); ``iap_members``
    may sign in to the app (``user:EMAIL``, ``group:EMAIL``, ``domain:DOMAIN``)."""
    path = infra / "terraform.tfvars"
    members = ", ".join(json.dumps(member) for member in iap_members)
    path.write_text(
        f'project_id     = "{project_id}"\n'
        f'project_number = "{project_number}"\n'
        f'region         = "{region}"\n'
        f'cluster_name   = "{cluster_name}"\n'
        f"iap_members    = [{members}]\n"
    )
    return path


def output(name: str, infra: Path = INFRA) -> Command:
    return command("terraform", f"-chdir={infra}", "output", "-raw", name)


def fmt_check(infra: Path = INFRA) -> Command:
    return command("terraform", "fmt", "-no-color", "-check", "-recursive", str(infra))


def init(infra: Path = INFRA) -> Command:
    return command("terraform", f"-chdir={infra}", "init", "-input=false")


def plan(infra: Path = INFRA) -> Command:
    return command("terraform", f"-chdir={infra}", "plan", "-input=false", "-out=tfplan")


def apply(infra: Path = INFRA) -> Command:
    return command("terraform", f"-chdir={infra}", "apply", "-input=false", "tfplan")


def destroy(infra: Path = INFRA) -> Command:
    return command("terraform", f"-chdir={infra}", "destroy", "-input=false", "-auto-approve")
