"""What exists in the fake project, kept in ``state.json`` between commands."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository


class State:
    """What exists in the fake project; saved after every command."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / "state.json"
        self.data = json.loads(self.path.read_text())
        self.changed = False

    def __getitem__(self, key: str):  # type: ignore[no-untyped-def]
        return self.data[key]

    def __setitem__(self, key: str, value: object) -> None:
        self.data[key] = value
        self.changed = True

    def save(self) -> None:
        """Written only if this command changed it: a long-running one (a port-forward) must
        not write back what it read at its start over what others did since."""
        if self.changed:
            self.path.write_text(json.dumps(self.data, indent=1))
            self.changed = False


def initial_state(project: str, **overrides: object) -> dict:
    """A project as a learner starts the workshop with: logged in, billing on, L4 quota, the
    two APIs needed before Terraform; nothing else. ``overrides`` set the failing cases."""
    return {
        "project": project,
        "project_number": "123456789012",
        "account": "learner@example.com",
        "adc": True,
        "billing": True,
        "enabled_apis": ["serviceusage.googleapis.com", "compute.googleapis.com"],
        "l4_quota": 4,  # NVIDIA_L4_GPUS in the region
        "gpus_all_regions": 4,  # GPUS_ALL_REGIONS for the project
        "buckets": [],
        "terraform": "new",  # new → initialized → planned → applied → (destroyed: initialized)
        "kube_context": None,
        "secrets": {},  # name → its data (key → value)
        "objects": {},  # "kind/name" → the manifest file that made it
        "pending_polls": 2,  # the Gemma pod stays Pending for this many `get pods`
        "loading_polls": 1,  # then Running, not Ready, for this many
        "gemma_url": "",  # where `kubectl port-forward service/gemma-service` leads
        "app_env": {},  # the app's environment when `skaffold run` starts it
        "app": None,  # {"pid", "port", "env"} of the app skaffold started
        "image": {},  # the image skaffold built: each path its Dockerfile copies into, and the folder here holding it
        "app_port": None,  # kept across restarts (`kubectl rollout restart`), as a Service's is
        "configmaps": {},  # name → its data, made by `kubectl create configmap`
        "iap_members": [],  # terraform.tfvars' iap_members, read by `terraform apply`
        "gateway_port": None,  # where the Gateway (IAP's double in front of the app) listens
        "gateway": None,  # its pid
        "backend_service_id": "4242424242",  # the backend service GKE's Gateway controller makes
        "backend_polls": 1,  # `backend-services list` finds none for this many polls
        "backend_seen": 0,
        "forwards": [],  # pids of the port-forwards started (the tests stop any left)
        "pod_polls": 0,
        "cloud": {},  # what `terraform apply` made from the learner's files: cluster, database, document, bindings
        "disks": [],  # (name, zone) of disks left behind (a volume's, after its cluster went)
        "room_projects": [],  # other attendees' projects this account can see, each with nothing left
        **overrides,
    }

