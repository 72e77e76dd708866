"""``terraform``: fmt for real, and apply/destroy making what the learner's files declare."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from .grammar import Call, Refused, Spec
from .state import State


def terraform_specs(state: State) -> dict[tuple[str, ...], Spec]:
    def infra(call: Call) -> Path:
        folder = Path(call.flag("-chdir") or ".")
        if not (folder / "main.tf").exists():
            raise Refused("╷\n│ Error: No configuration files\n│ \n│ Apply requires configuration to be present.\n╵")
        return folder

    def resources(folder: Path) -> int:
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



def _made(folder: Path) -> dict:
    """What a real `terraform apply` of the learner's files makes: each resource's settings with
    the variables (terraform.tfvars, else their defaults) and locals put in."""
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

