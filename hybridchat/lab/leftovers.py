"""What is left in a project that bills, after the workshop: notebook 07's last cell, and
``hybridchat room leftovers`` for an instructor's room of projects.

Each kind is listed with ``gcloud`` (read-only) in the workshop's region (addresses and
certificates: global ones too): ✅ when there is none, else each one with the command that
deletes it. A kind that cannot be listed (no permission) says so, rather than passing."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hybridchat.lab.shell import Command, CommandFailed, command, run


@dataclass(frozen=True)
class Kind:
    """One kind of billable resource: how to list it, which are in the region, how to delete one."""

    name: str
    argv: tuple[str, ...]
    regional: bool  # listed with --location=REGION (else filtered by each item's location)
    label: Callable[[dict[str, Any]], str]
    delete: Callable[[dict[str, Any], str, str], str]
    in_region: Callable[[dict[str, Any], str], bool] = lambda item, region: True


def _last(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _in_zone_of(item: dict[str, Any], region: str) -> bool:
    return _last(item.get("zone", "")).startswith(f"{region}-")


def _global_or_in(item: dict[str, Any], region: str) -> bool:
    return not item.get("region") or _last(item["region"]) == region


def _scope(item: dict[str, Any]) -> str:
    """The flag that names where a global-or-regional resource is, for its delete command."""
    return f"--region={_last(item['region'])}" if item.get("region") else "--global"


KINDS = (
    Kind("GKE clusters", ("container", "clusters", "list"), False, lambda c: f"{c['name']} ({c['location']})",
         lambda c, p, r: f"gcloud container clusters delete {c['name']} --location={c['location']} --project={p}",
         lambda c, region: c["location"].startswith(region)),
    Kind("GPU nodes", ("compute", "instances", "list"), False,
         lambda i: f"{i['name']} ({sum(a.get('acceleratorCount', 0) for a in i['guestAccelerators'])} GPU)",
         lambda i, p, r: "delete the Gemma Deployment or the cluster: GKE removes its nodes",
         lambda i, region: bool(i.get("guestAccelerators")) and _in_zone_of(i, region)),
    Kind("disks", ("compute", "disks", "list"), False, lambda d: d["name"],
         lambda d, p, r: f"gcloud compute disks delete {d['name']} --zone={_last(d['zone'])} --project={p}",
         _in_zone_of),
    Kind("load balancers", ("compute", "forwarding-rules", "list"), False, lambda f: f["name"],
         lambda f, p, r: f"gcloud compute forwarding-rules delete {f['name']} "
                         f"{_scope(f)} --project={p} "
                         "(then its proxy, URL map and backend service, on the console's Load balancing page)",
         _global_or_in),
    Kind("IP addresses", ("compute", "addresses", "list"), False, lambda a: f"{a['name']} ({a.get('address', '')})",
         lambda a, p, r: f"gcloud compute addresses delete {a['name']} "
                         f"{_scope(a)} --project={p}",
         _global_or_in),
    Kind("certificates", ("compute", "ssl-certificates", "list"), False, lambda c: c["name"],
         lambda c, p, r: f"gcloud compute ssl-certificates delete {c['name']} --global --project={p}",
         _global_or_in),
    Kind("buckets", ("storage", "buckets", "list"), False, lambda b: f"gs://{b['name']}",
         lambda b, p, r: f"gcloud storage rm --recursive gs://{b['name']} --project={p}"),
    Kind("Firestore databases", ("firestore", "databases", "list"), False, lambda d: _last(d["name"]),
         lambda d, p, r: f"gcloud firestore databases delete --database={_last(d['name'])} --project={p}"),
    Kind("Artifact Registry repositories", ("artifacts", "repositories", "list"), True, lambda r: _last(r["name"]),
         lambda repo, p, r: f"gcloud artifacts repositories delete {_last(repo['name'])} --location={r} --project={p}"),
)


def listing(kind: Kind, project_id: str, region: str) -> Command:
    where = (f"--location={region}",) if kind.regional else ()
    return command("gcloud", *kind.argv, f"--project={project_id}", *where, "--format=json")


@dataclass(frozen=True)
class Found:
    """What one kind has left: ``items`` (each with its delete command), or why it could not be listed."""

    kind: str
    items: tuple[tuple[str, str], ...] = ()
    unlisted: str = ""

    @property
    def clean(self) -> bool:
        return not self.items and not self.unlisted

    def line(self) -> str:
        if self.unlisted:
            return f"❓ {self.kind}: could not be listed ({self.unlisted})"
        if not self.items:
            return f"✅ {self.kind}: none"
        return "\n".join(f"❌ {self.kind}: {label} is left. Delete it: {delete}" for label, delete in self.items)


def check(project_id: str, region: str) -> list[Found]:
    """Each kind of billable resource left in ``project_id``, in ``region``."""
    found = []
    for kind in KINDS:
        try:
            items = json.loads(run(listing(kind, project_id, region), echo=False) or "[]")
        except CommandFailed as failed:
            said = str(failed).strip().splitlines()[-1]
            if "has not been used" in said or "is disabled" in said:  # no API, nothing of its kind
                found.append(Found(kind.name))
            else:
                found.append(Found(kind.name, unlisted=said))
            continue
        kept = [item for item in items if kind.in_region(item, region)]
        found.append(Found(kind.name, tuple((kind.label(i), kind.delete(i, project_id, region)) for i in kept)))
    return found


def report(project_id: str, region: str) -> bool:
    """Print what is left that bills in the project (one line per kind, or per resource left);
    whether nothing is."""
    found = check(project_id, region)
    for one in found:
        print(one.line())
    if any(one.items for one in found):
        print(f"Something still bills in {project_id}: delete it as said above, then run this check again.")
    elif any(one.unlisted for one in found):
        print(f"Nothing found in {project_id}, but not every kind could be listed (❓): look in the console.")
    else:
        print(f"Nothing of the workshop's kinds bills in {project_id} ({region}).")
    return all(one.clean for one in found)
