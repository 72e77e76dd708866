"""Test doubles for the workshop's cloud CLIs: ``gcloud``, ``terraform``, ``kubectl``, ``skaffold``.

`install(bin_dir, state_dir)` writes one executable per tool; put `bin_dir` first on PATH. Each
invocation runs `python cloud_doubles.py TOOL ARGS…`, which:

* checks the command line against the real tool's syntax, for the commands the workshop uses,
  and refuses anything else as the real tool does (its message and exit status);
* answers with the real tool's output, recorded, including the slow and failing answers (the
  GPU pod `Pending` with its "Insufficient nvidia.com/gpu" event for a few polls, the load
  balancer without an IP for a few polls, quota too small, billing off, not logged in);
* runs the real offline check where one exists: `terraform fmt` for real, `kubectl apply
  --dry-run=client` against the stub API server (`kube_api.py`);
* does the local part for real: `kubectl port-forward` forwards TCP to a local vLLM-protocol
  server, `skaffold run` builds the image's context by Docker's `.dockerignore` rules and starts
  the app on 127.0.0.1 from it (its load balancer IP), `kubectl exec` runs a command in the app's
  environment, `kubectl delete` stops it.

What exists (APIs, buckets, cluster, secrets, workloads) lives in `state.json` in the state
folder; every command line run is appended to `commands.log` there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("gcloud", "terraform", "kubectl", "skaffold", "gke-gcloud-auth-plugin")


class Refused(Exception):
    """The command line is not one the real tool takes: ``message`` on stderr, ``status`` out."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


# --- the grammar: each command the workshop runs, its flags (True: takes a value) and positionals


@dataclass(frozen=True)
class Spec:
    flags: dict[str, bool]
    positionals: tuple[int, int | None]  # at least, at most (None: any number)
    run: Callable[[Call], str]


@dataclass
class Call:
    tool: str
    path: tuple[str, ...]
    flags: dict[str, str | bool] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    cwd: Path = field(default_factory=Path.cwd)

    def flag(self, name: str) -> str:
        value = self.flags.get(name)
        return value if isinstance(value, str) else ""


def parse(tool: str, argv: list[str], specs: dict[tuple[str, ...], Spec]) -> tuple[Call, Spec]:
    """Split ``argv`` into the command's path, its flags and positionals, as ``tool`` would."""
    words = [a for a in argv if not a.startswith("-")]
    if argv == ["--version"]:
        words = argv
    path = max((p for p in specs if tuple(words[: len(p)]) == p), key=len, default=None)
    if path is None:
        raise Refused(_unknown_command(tool, words[0] if words else ""), 2 if tool == "gcloud" else 1)
    spec = specs[path]
    call, rest, consumed = Call(tool, path, argv=list(argv)), list(argv), 0
    if argv == ["--version"]:
        return call, spec
    while tool == "terraform" and rest and rest[0].startswith("-chdir="):  # a global option: first only
        call.flags["-chdir"] = rest.pop(0).partition("=")[2]
    while rest:
        arg = rest.pop(0)
        if arg == "--" and tool == "kubectl":  # `kubectl exec POD -- COMMAND…`: the rest is the command's
            call.args += rest
            break
        if arg.startswith("-") and arg != "-":
            name, has_value, value = arg.partition("=")
            if name not in spec.flags:
                raise Refused(_unknown_flag(tool, path, arg), 2 if tool == "gcloud" else 1)
            if spec.flags[name] and not has_value:
                if not rest:
                    raise Refused(_missing_value(tool, path, name), 2 if tool == "gcloud" else 1)
                value = rest.pop(0)
            call.flags[name] = value if spec.flags[name] else True
        elif consumed < len(path):
            consumed += 1
        else:
            call.args.append(arg)
    low, high = spec.positionals
    if len(call.args) < low or (high is not None and len(call.args) > high):
        raise Refused(_arguments(tool, path, call.args, low, high), 2 if tool == "gcloud" else 1)
    return call, spec


def _unknown_command(tool: str, word: str) -> str:
    return {
        "gcloud": f"ERROR: (gcloud) Invalid choice: '{word}'.\n\nTo search the help text of gcloud commands, run:\n  gcloud help -- SEARCH_TERMS",
        "kubectl": f'Error: unknown command "{word}" for "kubectl"',
        "terraform": f'Terraform has no command named "{word}".\n\nTo see all of Terraform\'s top-level commands, run:\n  terraform -help',
        "skaffold": f'Error: unknown command "{word}" for "skaffold"\nRun \'skaffold --help\' for usage.',
        "gke-gcloud-auth-plugin": f"unknown flag: {word}",
    }[tool]


def _unknown_flag(tool: str, path: tuple[str, ...], arg: str) -> str:
    return {
        "gcloud": f"ERROR: (gcloud.{'.'.join(path)}) unrecognized arguments: {arg} \n\nTo search the help text of gcloud commands, run:\n  gcloud help -- SEARCH_TERMS",
        "kubectl": f"Error: unknown flag: {arg.partition('=')[0]}\nSee 'kubectl {' '.join(path)} --help' for usage.",
        "terraform": f"╷\n│ Error: Failed to parse command-line flags\n│ \n│ flag provided but not defined: {arg.partition('=')[0]}\n╵\n\nFor more help on using this command, run:\n  terraform {' '.join(path)} -help",
        "skaffold": f"Error: unknown flag: {arg.partition('=')[0]}",
        "gke-gcloud-auth-plugin": f"unknown flag: {arg}",
    }[tool]


def _missing_value(tool: str, path: tuple[str, ...], name: str) -> str:
    if tool == "gcloud":
        return f"ERROR: (gcloud.{'.'.join(path)}) argument {name}: expected one argument"
    return f"Error: flag needs an argument: {name}"


def _arguments(tool: str, path: tuple[str, ...], args: list[str], low: int, high: int | None) -> str:
    if tool == "gcloud":
        if len(args) < low:
            return f"ERROR: (gcloud.{'.'.join(path)}) argument: Must be specified."
        return f"ERROR: (gcloud.{'.'.join(path)}) unrecognized arguments: {' '.join(args[high:])} "
    if tool == "kubectl" and path == ("port-forward",):
        return "error: TYPE/NAME and list of ports are required for port-forward\nSee 'kubectl port-forward -h' for help and examples"
    return f"Error: accepts between {low} and {high} arg(s), received {len(args)}"


# --- state -------------------------------------------------------------------------------------


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
        **overrides,
    }


# --- gcloud ------------------------------------------------------------------------------------


def gcloud_specs(state: State) -> dict[tuple[str, ...], Spec]:
    project_flag = {"--project": True}

    def require_login() -> None:
        if not state["account"]:
            raise Refused("ERROR: (gcloud) You do not currently have an active account selected.\n"
                          "Please run:\n\n  $ gcloud auth login\n\nto obtain new credentials.")

    def known_project(call: Call, project: str) -> None:
        require_login()
        if project != state["project"]:
            raise Refused(f"ERROR: (gcloud.{'.'.join(call.path)}) [{state['account']}] does not have permission "
                          f"to access projects instance [{project}] (or it may not exist): The caller does not have permission")

    def version(call: Call) -> str:
        return "Google Cloud SDK 528.0.0\nbq 2.1.18\ncore 2025.06.20\ngcloud-crc32c 1.0.0\ngsutil 5.34\n"

    def get_value(call: Call) -> str:
        if call.args != ["project"]:
            raise Refused(f"ERROR: (gcloud.config.get-value) Section [core] has no property [{call.args[0]}].")
        return f"{state['project']}\n"

    def describe_project(call: Call) -> str:
        known_project(call, call.args[0])
        if call.flag("--format") != "value(projectNumber)":
            raise Refused(f"cloud_doubles: no recorded answer for --format={call.flag('--format')}")
        return f"{state['project_number']}\n"

    def services_enable(call: Call) -> str:
        known_project(call, call.flag("--project") or state["project"])
        state["enabled_apis"] = sorted(set(state["enabled_apis"]) | set(call.args))
        return "Operation \"operations/acf.p2-123456789012-0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e\" finished successfully.\n"

    def services_list(call: Call) -> str:
        known_project(call, call.flag("--project") or state["project"])
        expect(call, format="value(config.name)")
        return "".join(f"{api}\n" for api in sorted(state["enabled_apis"]))

    def buckets_create(call: Call) -> str:
        known_project(call, call.flag("--project"))
        bucket = call.args[0]
        if bucket in state["buckets"]:
            raise Refused(f"Creating {bucket}/...\nERROR: (gcloud.storage.buckets.create) HTTPError 409: "
                          "Your previous request to create the named bucket succeeded and you already own it.")
        if "storage.googleapis.com" not in state["enabled_apis"]:
            raise Refused("ERROR: (gcloud.storage.buckets.create) HTTPError 403: Cloud Storage API has not been used in project before or it is disabled.")
        state["buckets"] = state["buckets"] + [bucket]
        return f"Creating {bucket}/...\n"

    def storage_rm(call: Call) -> str:
        known_project(call, call.flag("--project"))
        bucket = call.args[0]
        if bucket not in state["buckets"]:
            raise Refused(f"ERROR: (gcloud.storage.rm) The following URLs matched no objects or files:\n{bucket}")
        state["buckets"] = [b for b in state["buckets"] if b != bucket]
        return f"Removing {bucket}/...\n"

    def cluster_describe(call: Call) -> str:
        known_project(call, call.flag("--project"))
        name, region, made = call.args[0], call.flag("--region"), state["cloud"].get("cluster")
        expect(call, format="json")
        if not made or made["name"] != name or made["location"] != region:
            raise Refused(f"ERROR: (gcloud.container.clusters.describe) ResponseError: code=404, message=Not found: "
                          f"projects/{state['project']}/locations/{region}/clusters/{name}.\nNo cluster named '{name}' in "
                          f"{state['project']}.")
        return json.dumps({
            "autopilot": {"enabled": True} if made["autopilot"] else {}, "createTime": "2026-12-04T09:12:03+00:00",
            "currentMasterVersion": "1.33.5-gke.1080000", "endpoint": "34.56.78.90", "id": "9d3f5b1c0e2a4f6b8c7d5e3f1a2b4c6d",
            "location": made["location"], "locations": [f"{made['location']}-a", f"{made['location']}-b", f"{made['location']}-c"],
            "name": made["name"], "network": "default",
            "releaseChannel": {"channel": "REGULAR"},
            "selfLink": f"https://container.googleapis.com/v1/projects/{state['project']}/locations/{made['location']}/clusters/{made['name']}",
            "status": "RUNNING", "subnetwork": "default",
            "workloadIdentityConfig": {"workloadPool": f"{state['project']}.svc.id.goog"},
        }, indent=2) + "\n"

    def database_describe(call: Call) -> str:
        known_project(call, call.flag("--project"))
        expect(call, format="json")
        name, made = call.flag("--database"), state["cloud"].get("database")
        if not made or made["name"] != name:
            raise Refused(f"ERROR: (gcloud.firestore.databases.describe) NOT_FOUND: Project '{state['project']}' or "
                          f"database '{name}' does not exist.")
        return json.dumps({
            "appEngineIntegrationMode": "DISABLED", "concurrencyMode": "PESSIMISTIC",
            "createTime": "2026-12-04T09:10:41.528204Z", "deleteProtectionState": "DELETE_PROTECTION_DISABLED",
            "earliestVersionTime": "2026-12-04T09:10:41.528204Z", "etag": "IOPe8ImF6IkDMP/Eh4mF6IkD",
            "locationId": made["locationId"], "name": f"projects/{state['project']}/databases/{made['name']}",
            "pointInTimeRecoveryEnablement": "POINT_IN_TIME_RECOVERY_DISABLED", "type": made["type"],
            "uid": "6a3d5f0e-2b1c-4d7e-9f8a-0b1c2d3e4f5a", "updateTime": "2026-12-04T09:10:41.528204Z",
            "versionRetentionPeriod": "3600s",
        }, indent=2) + "\n"

    def iam_policy(call: Call) -> str:
        known_project(call, call.args[0])
        expect(call, format="json")
        owner = {"members": [f"user:{state['account']}"], "role": "roles/owner"}
        bindings = [owner] + [{"members": sorted(members), "role": role}
                              for role, members in sorted(state["cloud"].get("bindings", {}).items())]
        return json.dumps({"bindings": bindings, "etag": "BwY2mJ3k9Xo=", "version": 1}, indent=2) + "\n"

    def get_credentials(call: Call) -> str:
        known_project(call, call.flag("--project"))
        cluster, region = call.args[0], call.flag("--region")
        if state["terraform"] != "applied":
            raise Refused(f"Fetching cluster endpoint and auth data.\nERROR: (gcloud.container.clusters.get-credentials) "
                          f"ResponseError: code=404, message=Not found: projects/{state['project']}/locations/{region}/clusters/{cluster}.")
        state["kube_context"] = f"gke_{state['project']}_{region}_{cluster}"
        return f"Fetching cluster endpoint and auth data.\nkubeconfig entry generated for {cluster}.\n"

    def expect(call: Call, **flags: str) -> None:
        for name, value in flags.items():
            if call.flag(f"--{name}") != value:
                raise Refused(f"cloud_doubles: no recorded answer for --{name}={call.flag(f'--{name}')}")

    def auth_list(call: Call) -> str:
        expect(call, filter="status:ACTIVE", format="value(account)")
        if not state["account"]:  # as gcloud 528 answers with no account at all
            sys.stderr.write("WARNING: The following filter keys were not present in any resource : status\n")
            return ""
        return f"{state['account']}\n"

    def print_access_token(call: Call) -> str:
        if not state["adc"]:
            raise Refused("ERROR: (gcloud.auth.application-default.print-access-token) Your default credentials were not found. "
                          "To set up Application Default Credentials, see https://cloud.google.com/docs/authentication/external/set-up-adc for more information.")
        return "ya29.fake-access-token-for-tests\n"

    def billing(call: Call) -> str:
        known_project(call, call.args[0])
        expect(call, format="value(billingEnabled)")
        return f"{state['billing']}\n"

    def compute(call: Call) -> None:
        known_project(call, call.flag("--project"))
        expect(call, format="json")
        if "compute.googleapis.com" not in state["enabled_apis"]:
            raise Refused(f"ERROR: (gcloud.{'.'.join(call.path)}) Could not fetch resource:\n"
                          " - Compute Engine API has not been used in project before or it is disabled.")

    def region_describe(call: Call) -> str:
        compute(call)
        quotas = [{"limit": 24.0, "metric": "CPUS", "usage": 0.0},
                  {"limit": float(state["l4_quota"]), "metric": "NVIDIA_L4_GPUS", "usage": 0.0}]
        return json.dumps({"kind": "compute#region", "name": call.args[0], "quotas": quotas, "status": "UP"}, indent=2) + "\n"

    def project_info(call: Call) -> str:
        compute(call)
        quotas = [{"limit": 1000.0, "metric": "FIREWALLS", "usage": 0.0},
                  {"limit": float(state["gpus_all_regions"]), "metric": "GPUS_ALL_REGIONS", "usage": 0.0}]
        return json.dumps({"kind": "compute#project", "name": state["project"], "quotas": quotas}, indent=2) + "\n"

    def backend_services(call: Call) -> str:
        known_project(call, call.flag("--project"))
        expect(call, format="value(id)")
        if call.flag("--filter") != "name~-default-gradio-chat-service-7860-":
            raise Refused(f"cloud_doubles: no recorded answer for --filter={call.flag('--filter')}")
        seen = state["backend_seen"]
        state["backend_seen"] = seen + 1
        if "gateway.gateway.networking.k8s.io/gradio-chat-gateway" not in state["objects"] or seen < state["backend_polls"]:
            sys.stderr.write("Listed 0 items.\n")
            return ""
        return f"{state['backend_service_id']}\n"

    return {
        ("--version",): Spec({"--version": False}, (0, 0), version),
        ("compute", "backend-services", "list"): Spec({**project_flag, "--filter": True, "--format": True}, (0, 0), backend_services),
        ("config", "get-value"): Spec({}, (1, 1), get_value),
        ("projects", "describe"): Spec({"--format": True}, (1, 1), describe_project),
        ("services", "enable"): Spec(project_flag, (1, None), services_enable),
        ("services", "list"): Spec({**project_flag, "--enabled": False, "--format": True}, (0, 0), services_list),
        ("storage", "buckets", "create"): Spec({**project_flag, "--location": True}, (1, 1), buckets_create),
        ("storage", "rm"): Spec({**project_flag, "--recursive": False}, (1, None), storage_rm),
        ("container", "clusters", "get-credentials"): Spec({**project_flag, "--region": True}, (1, 1), get_credentials),
        ("container", "clusters", "describe"): Spec({**project_flag, "--region": True, "--format": True}, (1, 1), cluster_describe),
        ("firestore", "databases", "describe"): Spec({**project_flag, "--database": True, "--format": True}, (0, 0), database_describe),
        ("projects", "get-iam-policy"): Spec({"--format": True}, (1, 1), iam_policy),
        ("auth", "list"): Spec({"--filter": True, "--format": True}, (0, 0), auth_list),
        ("auth", "application-default", "print-access-token"): Spec({}, (0, 0), print_access_token),
        ("billing", "projects", "describe"): Spec({"--format": True}, (1, 1), billing),
        ("compute", "regions", "describe"): Spec({**project_flag, "--format": True}, (1, 1), region_describe),
        ("compute", "project-info", "describe"): Spec({**project_flag, "--format": True}, (0, 0), project_info),
    }


# --- terraform ---------------------------------------------------------------------------------


def terraform_specs(state: State) -> dict[tuple[str, ...], Spec]:
    def infra(call: Call) -> Path:
        folder = Path(call.flag("-chdir") or ".")
        if not (folder / "main.tf").exists():
            raise Refused("╷\n│ Error: No configuration files\n│ \n│ Apply requires configuration to be present.\n╵")
        return folder

    def resources(folder: Path) -> int:
        sys.path.insert(0, str(ROOT))
        from hybridchat.lab.terraform import resources as listed

        return sum(5 if row["resource"].startswith("google_project_service.") else 1 for row in listed(folder))

    def version(call: Call) -> str:
        return "Terraform v1.11.4\non linux_amd64\n"

    def fmt(call: Call) -> str:
        real = subprocess.run([os.environ["CLOUD_DOUBLES_REAL_TERRAFORM"], *call.argv], capture_output=True, text=True)
        if real.returncode:
            raise Refused(real.stdout + real.stderr, real.returncode)
        return real.stdout

    def init(call: Call) -> str:
        infra(call)
        if state["terraform"] == "new":
            state["terraform"] = "initialized"
        return ("\nInitializing the backend...\nInitializing provider plugins...\n- Finding hashicorp/google versions matching \"~> 6.0\"...\n"
                "- Installing hashicorp/google v6.42.0...\n- Installed hashicorp/google v6.42.0 (signed by HashiCorp)\n\n"
                "Terraform has been successfully initialized!\n")

    def plan(call: Call) -> str:
        folder = infra(call)
        if state["terraform"] == "new":
            raise Refused("╷\n│ Error: Inconsistent dependency lock file\n│ \n│ run \"terraform init\" to install all modules required by this configuration.\n╵")
        (folder / call.flag("-out")).write_text("fake plan: made by tests/cloud_doubles.py\n")
        state["terraform"] = "planned"
        return f"\nTerraform will perform the following actions:\n...\nPlan: {resources(folder)} to add, 0 to change, 0 to destroy.\n\nSaved the plan to: {call.flag('-out')}\n"

    def apply(call: Call) -> str:
        folder = infra(call)
        if state["terraform"] != "planned" or not (folder / call.args[0]).exists():
            raise Refused(f"╷\n│ Error: Failed to load \"{call.args[0]}\" as a plan file\n╵")
        state["terraform"] = "applied"
        state["cloud"] = _made(folder)
        _firestore_document(state, exists=True)
        tfvars = (folder / "terraform.tfvars").read_text()
        members = re.search(r"^iap_members\s*=\s*(\[.*\])$", tfvars, re.MULTILINE)
        state["iap_members"] = json.loads(members.group(1)) if members else []
        sys.path.insert(0, str(ROOT))
        from hybridchat.lab.local import free_port

        state["gateway_port"] = free_port()
        return (f"google_container_cluster.primary: Creating...\ngoogle_container_cluster.primary: Still creating... [10m0s elapsed]\n"
                f"google_container_cluster.primary: Creation complete after 10m12s\n\nApply complete! Resources: {resources(folder)} added, 0 changed, 0 destroyed.\n")

    def output(call: Call) -> str:
        infra(call)
        if state["terraform"] != "applied":
            raise Refused("╷\n│ Warning: No outputs found\n╵")
        if call.args != ["app_url"]:
            raise Refused(f"cloud_doubles: no recorded answer for output {call.args}")
        # Plain HTTP on 127.0.0.1: the one way the double differs (the real one is https://…sslip.io).
        return f"http://127.0.0.1:{state['gateway_port']}"

    def destroy(call: Call) -> str:
        folder = infra(call)
        destroyed = resources(folder) if state["terraform"] == "applied" else 0
        _firestore_document(state, exists=False)
        state["terraform"], state["kube_context"], state["cloud"] = "initialized", None, {}
        return f"\nDestroy complete! Resources: {destroyed} destroyed.\n"

    return {
        ("version",): Spec({}, (0, 0), version),
        ("fmt",): Spec({"-no-color": False, "-check": False, "-recursive": False}, (0, 1), fmt),
        ("init",): Spec({"-input": True}, (0, 0), init),
        ("plan",): Spec({"-input": True, "-out": True}, (0, 0), plan),
        ("apply",): Spec({"-input": True}, (1, 1), apply),
        ("destroy",): Spec({"-input": True, "-auto-approve": False}, (0, 0), destroy),
        ("output",): Spec({"-raw": False}, (1, 1), output),
    }


# --- kubectl -----------------------------------------------------------------------------------


def kubectl_specs(state: State) -> dict[tuple[str, ...], Spec]:
    def connected() -> None:
        if not state["kube_context"]:
            raise Refused("E1125 12:00:00.000000 memcache.go:265] couldn't get current server API group list: "
                          "Get \"http://localhost:8080/api?timeout=32s\": dial tcp 127.0.0.1:8080: connect: connection refused\n"
                          "The connection to the server localhost:8080 was refused - did you specify the right host or port?")

    def objects(manifest: Path) -> list[str]:
        kinds = {"Deployment": "deployment.apps", "Service": "service", "ServiceAccount": "serviceaccount", "ConfigMap": "configmap",
                 "Gateway": "gateway.gateway.networking.k8s.io", "HTTPRoute": "httproute.gateway.networking.k8s.io",
                 "HealthCheckPolicy": "healthcheckpolicy.networking.gke.io",
                 "GCPBackendPolicy": "gcpbackendpolicy.networking.gke.io",
                 "HorizontalPodAutoscaler": "horizontalpodautoscaler.autoscaling",
                 "PodDisruptionBudget": "poddisruptionbudget.policy"}
        return [f"{kinds.get(d['kind'], d['kind'].lower())}/{d['metadata']['name']}"
                for d in yaml.safe_load_all(manifest.read_text()) if d]

    def version(call: Call) -> str:
        return "Client Version: v1.34.1\nKustomize Version: v5.7.1\n"

    def creator(kind: str) -> Callable[[Call], str]:
        """`kubectl create secret generic` or `create configmap`: one literal, kept in state."""
        def create(call: Call) -> str:
            connected()
            name, kept = call.args[0], state[f"{kind}s"]
            if name in kept:
                raise Refused(f'error: failed to create {kind} {kind}s "{name}" already exists')
            key, _, value = call.flag("--from-literal").partition("=")
            state[f"{kind}s"] = {**kept, name: {key: value}}
            return f"{kind}/{name} created\n"

        return create

    def rollout(call: Call) -> str:
        connected()
        verb, target = call.args
        if target != "deployment/gradio-chat" or "deployment.apps/gradio-chat" not in state["objects"]:
            raise Refused(f'Error from server (NotFound): deployments.apps "{target.partition("/")[2]}" not found')
        if verb == "restart":
            _deploy(state)  # the new pod, with the ConfigMaps and Secrets as they are now
            return "deployment.apps/gradio-chat restarted\n"
        if verb == "status":
            return 'deployment "gradio-chat" successfully rolled out\n'
        raise Refused(f'error: unknown command "{verb}" for "kubectl rollout"')

    def apply(call: Call) -> str:
        connected()
        manifest = Path(call.flag("-f"))
        dry_run = subprocess.run(
            [os.environ["CLOUD_DOUBLES_REAL_KUBECTL"], "apply", "--dry-run=client", "--validate=false", "-f", str(manifest),
             f"--kubeconfig={os.environ['CLOUD_DOUBLES_KUBECONFIG']}"], capture_output=True, text=True)
        if dry_run.returncode:
            raise Refused(dry_run.stderr, dry_run.returncode)
        lines = []
        for name in objects(manifest):
            lines.append(f"{name} {'configured' if name in state['objects'] else 'created'}")
            state["objects"] = {**state["objects"], name: manifest.name}
        return "\n".join(lines) + "\n"

    def gemma_pod() -> dict:
        if "deployment.apps/vllm-gemma-deployment" not in state["objects"]:
            return {}
        polls = state["pod_polls"]
        state["pod_polls"] = polls + 1
        if polls < state["pending_polls"]:
            status = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                      "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."}]}
        else:
            ready = polls >= state["pending_polls"] + state["loading_polls"]
            status = {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"},
                                                         {"type": "Ready", "status": "True" if ready else "False"}]}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "vllm-gemma-deployment-7c9d8b6f5-x2k4q",
                "labels": {"app": "gemma-server"}}, "status": status}

    def get(call: Call) -> str:
        connected()
        kind = call.args[0]
        if kind == "pods":
            if call.flag("-l") != "app=gemma-server" or call.flag("-o") != "json":
                raise Refused("cloud_doubles: no recorded answer but for `get pods -l app=gemma-server -o json`")
            pod = gemma_pod()
            return json.dumps({"apiVersion": "v1", "kind": "List", "items": [pod] if pod else []}, indent=4) + "\n"
        if kind == "events":
            if state["pod_polls"] <= state["pending_polls"]:
                return ("LAST SEEN   TYPE      REASON              OBJECT                                      MESSAGE\n"
                        "2m10s       Warning   FailedScheduling    pod/vllm-gemma-deployment-7c9d8b6f5-x2k4q   0/2 nodes are available: 2 Insufficient nvidia.com/gpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod.\n"
                        "2m5s        Normal    TriggeredScaleUp    pod/vllm-gemma-deployment-7c9d8b6f5-x2k4q   pod triggered scale-up: [{https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-a/instanceGroups/gk3-gradio-chat-cluster-nap-1 0->1 (max: 1000)}]\n")
            return "No resources found in default namespace.\n"
        if kind == "secret":
            name = call.args[1] if len(call.args) > 1 else ""
            if call.flag("-o") != "name":
                raise Refused(f"cloud_doubles: no recorded answer for -o {call.flag('-o')}")
            if name in state["secrets"]:
                return f"secret/{name}\n"
            if call.flags.get("--ignore-not-found"):
                return ""
            raise Refused(f'Error from server (NotFound): secrets "{name}" not found')
        raise Refused(f'error: the server doesn\'t have a resource type "{kind}"')

    def delete(call: Call) -> str:
        connected()
        if call.args[:1] in (["secret"], ["configmap"]):
            kind, name = call.args
            kept = state["secrets" if kind == "secret" else "configmaps"]
            if name not in kept:
                return "" if call.flags.get("--ignore-not-found") else f'Error from server (NotFound): {kind}s "{name}" not found'
            state["secrets" if kind == "secret" else "configmaps"] = {k: v for k, v in kept.items() if k != name}
            return f'{kind} "{name}" deleted\n'
        manifest = Path(call.flag("-f"))
        lines = []
        for name in objects(manifest):
            if name in state["objects"]:
                state["objects"] = {k: v for k, v in state["objects"].items() if k != name}
                kind, _, short = name.partition("/")
                lines.append(f'{kind} "{short}" deleted')
        if manifest.name == "chat-deploy.yaml" and state["app"]:
            _stop(state["app"]["pid"])
            state["app"] = None
        if manifest.name == "chat-gateway.yaml" and state["gateway"]:
            _stop(state["gateway"])
            state["gateway"] = None
        return "".join(f"{line}\n" for line in lines)

    def exec_in_app(call: Call) -> str:
        """A `hybridchat` command in the app's container: its image's files, its environment."""
        connected()
        target, *argv = call.args
        if target != "deployment/gradio-chat" or not state["app"]:
            raise Refused(f'Error from server (NotFound): deployments.apps "{target.partition("/")[2]}" not found')
        if "--" not in call.argv:
            raise Refused("error: exec [POD] [COMMAND] is not supported anymore. Use exec [POD] -- [COMMAND] instead")
        if argv[0] != "hybridchat":
            raise Refused(f'OCI runtime exec failed: exec failed: unable to start container process: exec: "{argv[0]}": '
                          "executable file not found in $PATH: unknown\ncommand terminated with exit code 126", 126)
        done = subprocess.run([sys.executable, "-m", "hybridchat.cli", *argv[1:]], env={**os.environ, **state["app"]["env"]},
                              capture_output=True, text=True, timeout=300)
        if done.returncode:
            raise Refused(f"{done.stdout}{done.stderr}command terminated with exit code {done.returncode}", done.returncode)
        return done.stdout

    def port_forward(call: Call) -> str:
        connected()
        target, ports = call.args
        local, _, remote = ports.partition(":")
        if f"service/{target.partition('/')[2]}" not in state["objects"]:
            raise Refused(f'Error from server (NotFound): services "{target.partition("/")[2]}" not found')
        if state["pod_polls"] <= state["pending_polls"]:
            raise Refused("error: unable to forward port because pod is not running. Current status=Pending")
        state["forwards"] = state["forwards"] + [os.getpid()]
        state.save()
        print(f"Forwarding from 127.0.0.1:{local} -> {remote}\nForwarding from [::1]:{local} -> {remote}", flush=True)
        asyncio.run(_forward(int(local), state["gemma_url"]))
        return ""

    return {
        ("version",): Spec({"--client": False}, (0, 0), version),
        ("create", "secret", "generic"): Spec({"--from-literal": True}, (1, 1), creator("secret")),
        ("create", "configmap"): Spec({"--from-literal": True}, (1, 1), creator("configmap")),
        ("rollout",): Spec({"--timeout": True}, (2, 2), rollout),
        ("apply",): Spec({"-f": True}, (0, 0), apply),
        ("get",): Spec({"-l": True, "-o": True, "--field-selector": True, "--sort-by": True, "--ignore-not-found": False}, (1, 2), get),
        ("delete",): Spec({"-f": True, "--ignore-not-found": False}, (0, 2), delete),
        ("port-forward",): Spec({}, (2, 2), port_forward),
        ("exec",): Spec({}, (2, None), exec_in_app),
    }


async def _forward(port: int, target_url: str) -> None:
    """Forward TCP from 127.0.0.1:``port`` to the host and port of ``target_url``, until stopped."""
    host, target_port = target_url.split("//")[1].split(":")

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(target_port))
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = await asyncio.start_server(connection, "127.0.0.1", port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


def _made(folder: Path) -> dict:
    """What a real `terraform apply` of the learner's files makes: each resource's settings with
    the variables (terraform.tfvars, else their defaults) and locals put in."""
    sys.path.insert(0, str(ROOT))
    from hybridchat.lab.check import CheckFailed
    from hybridchat.lab.check_infra import read
    from hybridchat.lab.terraform import parse

    try:
        config = read(folder)
    except CheckFailed as unreadable:
        raise Refused(f"╷\n│ Error: Invalid configuration\n│ \n│ {unreadable}\n╵") from None
    variables = {**config.defaults, **parse(folder / "terraform.tfvars")}

    def value(text: object) -> str:
        text = str(config.resolved(text))
        return re.sub(r"\$\{var\.(\w+)\}", lambda found: str(variables[found.group(1)]), text)

    made: dict = {"bindings": {}}
    for block in config.blocks:
        body = block.body
        if block.kind == "google_container_cluster":
            made["cluster"] = {"name": value(body.get("name")), "location": value(body.get("location")),
                               "autopilot": body.get("enable_autopilot") is True}
        elif block.kind == "google_firestore_database":
            made["database"] = {"name": value(body.get("name")), "type": value(body.get("type")),
                                "locationId": value(body.get("location_id"))}
        elif block.kind == "google_firestore_document":
            made["document"] = [value(body.get("collection")), value(body.get("document_id"))]
        elif block.kind == "google_project_iam_member":
            made["bindings"].setdefault(value(body.get("role")), []).append(value(body.get("member")))
    return made


def _firestore_document(state: State, *, exists: bool) -> None:
    """The learner's document in the Firestore emulator, where the tests run one: written by
    apply, deleted with the database by destroy."""
    made = state["cloud"]
    if not os.environ.get("FIRESTORE_EMULATOR_HOST") or not made.get("document") or not made.get("database"):
        return
    from google.cloud import firestore

    client = firestore.Client(project=state["project"], database=made["database"]["name"])
    document = client.collection(made["document"][0]).document(made["document"][1])
    if exists:
        document.set({"created_by": "terraform"})
    else:
        document.delete()
    client.close()


# --- skaffold ----------------------------------------------------------------------------------


def skaffold_specs(state: State) -> dict[tuple[str, ...], Spec]:
    def version(call: Call) -> str:
        return "v2.16.1\n"

    def run(call: Call) -> str:
        config = call.cwd / "skaffold.yaml"
        if not config.exists():
            raise Refused("skaffold.yaml not found - check your current working directory, or try running `skaffold init`")
        if not state["kube_context"]:
            raise Refused("getting current cluster context: no current context set")
        repo = call.flag("--default-repo")
        skaffold = yaml.safe_load(config.read_text())
        artifact = skaffold["build"]["artifacts"][0]
        context = call.cwd / artifact["context"]
        state["image"] = _build(context, context / artifact["docker"]["dockerfile"], state.folder / "image")
        manifests = [ROOT / path for path in skaffold["manifests"]["rawYaml"]]
        lines = ["Generating tags...", f" - gradio-chat-app -> {repo}/gradio-chat-app:latest", "Checking cache...",
                 " - gradio-chat-app: Not found. Building", "Starting build...", "Building [gradio-chat-app]...",
                 "Build [gradio-chat-app] succeeded", "Starting deploy..."]
        for manifest in manifests:
            lines.append(" - " + kubectl_specs(state)[("apply",)].run(Call("kubectl", ("apply",), {"-f": str(manifest)})).strip().replace("\n", "\n - "))
        _deploy(state)
        lines += ["Waiting for deployments to stabilize...", " - deployment/gradio-chat-deployment is ready.",
                  "Deployments stabilized in 3.2 seconds"]
        return "\n".join(lines) + "\n"

    return {
        ("--version",): Spec({"--version": False}, (0, 0), version),
        ("run",): Spec({"--default-repo": True}, (0, 0), run),
    }


def _build(context: Path, dockerfile: Path, image: Path) -> dict[str, str]:
    """The image as Cloud Build makes it from ``context``: the files Docker's own `.dockerignore`
    rules send (docker-py's), each `COPY` source found among them, as the build would fail
    otherwise. Returns each path the runtime stage copies into, and where its files are here."""
    from docker.utils.build import exclude_paths

    patterns = (context / ".dockerignore").read_text().splitlines()
    shutil.rmtree(image, ignore_errors=True)
    for path in exclude_paths(str(context), patterns, dockerfile=str(dockerfile.relative_to(context))):
        if (context / path).is_file():
            (image / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(context / path, image / path)
    stages = re.split(r"^FROM ", dockerfile.read_text().replace("\\\n", " "), flags=re.MULTILINE)
    copied = {}
    for stage in stages[1:]:
        for line in re.findall(r"^COPY (?!--from)(.+)$", stage, re.MULTILINE):
            *sources, target = shlex.split(line)
            for source in sources:
                if not (image / source).exists():
                    raise Refused(f"Step #0: COPY failed: file not found in build context or excluded by .dockerignore: "
                                  f"stat {source}: file does not exist\nERROR: build step 0 \"gcr.io/cloud-builders/docker\" failed")
            if stage is stages[-1] and len(sources) == 1:
                copied[target] = str(image / sources[0])
    return copied


def _in_image(value: str, image: dict[str, str]) -> str:
    """A path in the app's container as a path here, where it lies inside what the image copied."""
    for target, here in image.items():
        if value == target or value.startswith(target.rstrip("/") + "/"):
            return here + value[len(target.rstrip("/")):]
    return value


def _deploy(state: State) -> None:
    """The app's pod as the cluster would run it now (started anew if one runs), and the
    Gateway in front of it once ``chat-gateway.yaml`` is applied: IAP's double, signing people
    in, if ``chat-iap-policy.yaml`` and its OAuth Secret are there too, else passing requests
    through as a Gateway without IAP does."""
    sys.path.insert(0, str(ROOT))
    from hybridchat.lab.local import free_port

    if state["app"]:
        _stop(state["app"]["pid"])
    state["app_port"] = state["app_port"] or free_port()
    manifest = ROOT / "deploy" / "chat-deploy.yaml"
    # The ConfigMap's settings, then this machine's (the stand-ins' URLs), then the Secrets'.
    config = next(d for d in yaml.safe_load_all(manifest.read_text()) if d and d["kind"] == "ConfigMap")["data"]
    env = {**config, **state["app_env"], **_env_from_refs(manifest, state)}
    env = {name: _in_image(value, state["image"]) for name, value in env.items()}
    behind_gateway = "gateway.gateway.networking.k8s.io/gradio-chat-gateway" in state["objects"]
    if behind_gateway:
        env["HYBRIDCHAT_IAP_KEYS_URL"] = f"http://127.0.0.1:{state['gateway_port']}/_iap_double/public_key"
    state["app"] = {**_start_app(env, state["app_port"]), "env": env}
    if behind_gateway and not state["gateway"]:
        iap_on = "gcpbackendpolicy.networking.gke.io/gradio-chat-backend" in state["objects"] and "gradio-chat-oauth" in state["secrets"]
        members = [m.partition(":")[2] for m in state["iap_members"] if m.startswith("user:")]
        argv = [sys.executable, str(Path(__file__).with_name("iap_double.py")), "--port", str(state["gateway_port"]),
                "--upstream", f"http://127.0.0.1:{state['app_port']}",
                "--audience", f"/projects/{state['project_number']}/global/backendServices/{state['backend_service_id']}",
                "--members", ",".join(members), "--key-file", str(state.folder / "iap_key.pem"), *([] if iap_on else ["--open"])]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        state["gateway"] = process.pid
        _wait_until_answers(f"http://127.0.0.1:{state['gateway_port']}/_iap_double/public_key", process)


def _env_from_refs(manifest: Path, state: State) -> dict[str, str]:
    """The app container's variables from Secrets and ConfigMaps (its manifest's
    ``secretKeyRef``s and ``configMapKeyRef``s), as the kubelet gives them: a required one that
    is missing keeps the pod from starting; an optional one is left unset."""
    deployment = next(d for d in yaml.safe_load_all(manifest.read_text()) if d and d["kind"] == "Deployment")
    env = {}
    for variable in deployment["spec"]["template"]["spec"]["containers"][0].get("env", []):
        source = variable.get("valueFrom", {})
        kind, ref = ("secret", source["secretKeyRef"]) if "secretKeyRef" in source else ("configmap", source.get("configMapKeyRef"))
        if ref is None:
            continue
        data = state["secrets" if kind == "secret" else "configmaps"].get(ref["name"])
        if data is None or ref["key"] not in data:
            if ref.get("optional"):
                continue
            raise Refused(f"deployment/gradio-chat-deployment failed to stabilize: its pod is in CreateContainerConfigError "
                          f'({kind} "{ref["name"]}" not found)')
        env[variable["name"]] = data[ref["key"]]
    return env


def _wait_until_answers(url: str, process: subprocess.Popen) -> None:
    import httpx

    sys.path.insert(0, str(ROOT))
    from conftest import wait_for  # the tests' one poll (imported here: the doubles run as a script)

    def answers_or_exited() -> str | None:
        if process.poll() is not None:
            return "exited"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return "answers"
        return None

    with contextlib.suppress(AssertionError):  # gave up: as a pod that never gets ready
        if wait_for(answers_or_exited, 120, every=0.2) == "answers":
            return
    _stop(process.pid)
    raise Refused("deployment/gradio-chat-deployment failed to stabilize (its pod would be in CrashLoopBackOff)")


def _start_app(env: dict[str, str], port: int) -> dict:
    """The chat app as a local process: what the cluster would run, at 127.0.0.1:PORT."""
    process = subprocess.Popen(
        [sys.executable, "-m", "hybridchat.cli", "app", "--port", str(port)],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    _wait_until_answers(f"http://127.0.0.1:{port}/healthz", process)
    return {"pid": process.pid, "port": port}


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)


# --- entry point -------------------------------------------------------------------------------

def auth_plugin_specs(state: State) -> dict[tuple[str, ...], Spec]:
    def version(call: Call) -> str:
        return "Kubernetes v1.30.0+2c2c5ae9c8f7d2cbd4ecb5e6b6f1c4f8f6f3b1e0\n"

    return {("--version",): Spec({"--version": False}, (0, 0), version)}


SPECS = {"gcloud": gcloud_specs, "terraform": terraform_specs, "kubectl": kubectl_specs, "skaffold": skaffold_specs,
         "gke-gcloud-auth-plugin": auth_plugin_specs}


def main(tool: str, argv: list[str]) -> int:
    folder = Path(os.environ["CLOUD_DOUBLES_DIR"])
    with (folder / "commands.log").open("a") as log:  # secret literals (the HF token) masked
        log.write(shlex.join([tool, *(re.sub(r"^(--from-literal=[^=]+=).*", r"\1****", a) for a in argv)]) + "\n")
    state = State(folder)
    try:
        call, spec = parse(tool, argv, SPECS[tool](state))
        output = spec.run(call)
    except Refused as refused:
        state.save()
        print(refused, file=sys.stderr)
        return refused.status
    state.save()
    sys.stdout.write(output)
    return 0


def install(bin_dir: Path, state_dir: Path, state: dict, kubeconfig: Path) -> None:
    """Shims for every tool in ``bin_dir``, and the starting ``state`` in ``state_dir``;
    ``kubeconfig`` points the real kubectl's dry runs at the stub API server."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "state.json").write_text(json.dumps(state, indent=1))
    (state_dir / "commands.log").write_text("")
    settings = {
        "CLOUD_DOUBLES_DIR": state_dir,
        "CLOUD_DOUBLES_KUBECONFIG": kubeconfig,
        "CLOUD_DOUBLES_REAL_KUBECTL": shutil.which("kubectl"),
        "CLOUD_DOUBLES_REAL_TERRAFORM": shutil.which("terraform"),
    }
    exports = " ".join(f"{name}={shlex.quote(str(value))}" for name, value in settings.items())
    for tool in TOOLS:
        shim = bin_dir / tool
        shim.write_text(f"#!/bin/sh\n{exports} exec {shlex.quote(sys.executable)} {shlex.quote(__file__)} {tool} \"$@\"\n")
        shim.chmod(0o755)


def stop_all(state_dir: Path) -> None:
    """Stop what the doubles left running: port-forwards, and the app skaffold started."""
    state = json.loads((state_dir / "state.json").read_text())
    for pid in [*state["forwards"], *([state["app"]["pid"]] if state["app"] else []), *([state["gateway"]] if state["gateway"] else [])]:
        _stop(pid)


def commands(state_dir: Path, workspace: Path | None = None) -> list[str]:
    """The command lines run since the last call: the repository's path written ``<repo>``, the
    learner's workspace ``<workspace>``, a port-forward's free local port ``PORT``."""
    log = state_dir / "commands.log"
    text = log.read_text().replace(str(workspace), "<workspace>") if workspace else log.read_text()
    text = re.sub(r"port-forward (\S+) \d+:", r"port-forward \1 PORT:", text.replace(str(ROOT), "<repo>"))
    log.write_text("")
    return text.splitlines()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
