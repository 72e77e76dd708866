"""``gcloud … list --format=json`` for each kind of resource that bills, as notebook 07's last
check and ``hybridchat room leftovers`` read them: what the fake project holds now, in the
shapes gcloud prints. Projects in ``room_projects`` are other attendees' projects the account
can see, each with nothing left."""

from __future__ import annotations

import json

from .grammar import Call, Refused, Spec
from .state import State

COMPUTE = "https://www.googleapis.com/compute/v1/projects"


def listing_specs(state: State) -> dict[tuple[str, ...], Spec]:
    def seen(call: Call) -> bool:
        """Whether the project is the learner's (False: a room project with nothing in it)."""
        project = call.flag("--project")
        if call.flag("--format") != "json":
            raise Refused(f"cloud_doubles: no recorded answer for --format={call.flag('--format')}")
        if project == state["project"]:
            return True
        if project in state["room_projects"]:
            return False
        raise Refused(f"ERROR: (gcloud.{'.'.join(call.path)}) [{state['account']}] does not have permission to access "
                      f"projects instance [{project}] (or it may not exist): The caller does not have permission")

    def answer(items: list[dict]) -> str:
        return json.dumps(items, indent=2) + "\n"

    def applied() -> bool:
        return state["terraform"] == "applied"

    def clusters(call: Call) -> str:
        made = state["cloud"].get("cluster") if seen(call) else None
        return answer([{"name": made["name"], "location": made["location"], "status": "RUNNING",
                        "autopilot": {"enabled": made["autopilot"]}}] if made else [])

    def instances(call: Call) -> str:
        gpus = (seen(call) and state["cloud"].get("cluster") and "deployment.apps/vllm-gemma-deployment" in state["objects"]
                and state["pod_polls"] > state["pending_polls"])
        region = state["cloud"]["cluster"]["location"] if gpus else ""
        return answer([{"name": "gk3-gradio-chat-cluster-nap-1abc2def-5f1e", "status": "RUNNING",
                        "zone": f"{COMPUTE}/{state['project']}/zones/{region}-a",
                        "guestAccelerators": [{"acceleratorCount": 2, "acceleratorType":
                                               f"{COMPUTE}/{state['project']}/zones/{region}-a/acceleratorTypes/nvidia-l4"}]}]
                      if gpus else [])

    def disks(call: Call) -> str:
        return answer([{"name": name, "sizeGb": "100", "zone": f"{COMPUTE}/{state['project']}/zones/{zone}"}
                       for name, zone in state["disks"]] if seen(call) else [])

    def forwarding_rules(call: Call) -> str:  # the Gateway's load balancer, while the Gateway exists
        gateway = seen(call) and "gateway.gateway.networking.k8s.io/gradio-chat-gateway" in state["objects"]
        return answer([{"name": "gkegw1-4k2m-default-gradio-chat-gateway-7n3x9q2w5e8r", "IPAddress": "34.117.48.201",
                        "loadBalancingScheme": "EXTERNAL_MANAGED", "portRange": "443-443"}] if gateway else [])

    def addresses(call: Call) -> str:
        return answer([{"name": "gradio-chat-ip", "address": "34.117.48.201", "addressType": "EXTERNAL",
                        "status": "IN_USE"}] if seen(call) and applied() else [])

    def certificates(call: Call) -> str:
        return answer([{"name": "gradio-chat-cert", "type": "MANAGED",
                        "managed": {"domains": ["34-117-48-201.sslip.io"], "status": "ACTIVE"}}]
                      if seen(call) and applied() else [])

    def buckets(call: Call) -> str:
        return answer([{"name": bucket.removeprefix("gs://"), "location": "US-CENTRAL1"} for bucket in state["buckets"]]
                      if seen(call) else [])

    def databases(call: Call) -> str:
        made = state["cloud"].get("database") if seen(call) else None
        return answer([{"name": f"projects/{state['project']}/databases/{made['name']}", "locationId": made["locationId"],
                        "type": made["type"]}] if made else [])

    def repositories(call: Call) -> str:
        location = call.flag("--location")
        return answer([{"name": f"projects/{state['project']}/locations/{location}/repositories/chat-app-repo",
                        "format": "DOCKER"}] if seen(call) and applied() else [])

    flags = {"--project": True, "--format": True}
    return {
        ("container", "clusters", "list"): Spec(flags, (0, 0), clusters),
        ("compute", "instances", "list"): Spec(flags, (0, 0), instances),
        ("compute", "disks", "list"): Spec(flags, (0, 0), disks),
        ("compute", "forwarding-rules", "list"): Spec(flags, (0, 0), forwarding_rules),
        ("compute", "addresses", "list"): Spec(flags, (0, 0), addresses),
        ("compute", "ssl-certificates", "list"): Spec(flags, (0, 0), certificates),
        ("storage", "buckets", "list"): Spec(flags, (0, 0), buckets),
        ("firestore", "databases", "list"): Spec(flags, (0, 0), databases),
        ("artifacts", "repositories", "list"): Spec({**flags, "--location": True}, (0, 0), repositories),
    }
