"""``gcloud`` and ``gke-gcloud-auth-plugin``: the project, its APIs, bucket, quota and sign-in."""

from __future__ import annotations

import json
import sys

from .grammar import Call, Refused, Spec
from .listings import listing_specs
from .state import State


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
        **listing_specs(state),
    }



def auth_plugin_specs(state: State) -> dict[tuple[str, ...], Spec]:
    def version(call: Call) -> str:
        return "Kubernetes v1.30.0+2c2c5ae9c8f7d2cbd4ecb5e6b6f1c4f8f6f3b1e0\n"

    return {("--version",): Spec({"--version": False}, (0, 0), version)}

