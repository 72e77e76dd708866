"""Checker cells for notebook 01's Terraform exercise: the four blocks a learner writes in
``infra/main.tf``, read offline in a second (python-hcl2 and ``terraform fmt``), and after
``terraform apply`` what now exists in the project ("Check my progress").

Each checker prints ✅, or raises ``CheckFailed`` with one hint (shown alone, as in 03 and 04):
which block, in which file and line, and what to change.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridchat.lab import progress, terraform
from hybridchat.lab.check import CheckFailed

# Each block a learner writes: its resource type, the label the rest of infra/ refers to it by,
# and the TODO comment it goes under (notebook 01's step).
BLOCKS = {
    "cluster": ("google_container_cluster", "primary", "Create a GKE Autopilot cluster", 1),
    "database": ("google_firestore_database", "chat", "Create a Firestore database", 2),
    "document": ("google_firestore_document", "initialize", "Create an initial Firestore document", 3),
    "workload_identity": ("google_project_iam_member", None, "Configure the Workload Identity IAM bindings", 4),
}
APP_ROLES = {
    "roles/aiplatform.user": "the app could not call Gemini on Vertex AI (403 PERMISSION_DENIED)",
    "roles/datastore.user": "the app could not read or write the chats in Firestore (403 PERMISSION_DENIED)",
}
# Roles that let whoever controls the app's pod do far more than the app does.
BROAD_ROLES = ("roles/owner", "roles/editor", "roles/iam.serviceAccountTokenCreator", "roles/datastore.owner",
               "roles/aiplatform.admin", "roles/iam.securityAdmin", "roles/resourcemanager.projectIamAdmin")
PRINCIPAL = ("principal://iam.googleapis.com/projects/${var.project_number}/locations/global/workloadIdentityPools/"
             "${var.project_id}.svc.id.goog/subject/ns/${var.namespace}/sa/${var.ksa_name}")
_PRINCIPAL = re.compile(r"principal://iam\.googleapis\.com/projects/(?P<number>[^/]+)/locations/global/"
                        r"workloadIdentityPools/(?P<pool>.+)\.svc\.id\.goog/subject/ns/(?P<ns>[^/]+)/sa/(?P<sa>[^/]+)")
_IAM_KINDS = ("google_project_iam_member", "google_project_iam_binding", "google_project_iam_policy")


@dataclass(frozen=True)
class Block:
    """One ``resource`` block as python-hcl2 reads it, and where it and its settings are."""

    kind: str
    label: str
    body: dict[str, Any]
    file: str  # "infra/main.tf"
    line: int  # its `resource` line
    lines: dict[str, int]  # each setting's line (`name = …` or `name {`)

    @property
    def at(self) -> str:
        return f"{self.file}, line {self.line}"

    def at_setting(self, setting: str) -> str:
        """Where ``setting`` is written, to mend it there; the block's line when it is missing."""
        return f"{self.file}, line {self.lines.get(setting, self.line)}"

    def has(self, setting: str, value: Any) -> bool:
        return bool(self.body.get(setting) == value)

    def waits_for(self, reference: str) -> bool:
        return f"${{{reference}}}" in self.body.get("depends_on", [])


@dataclass(frozen=True)
class Config:
    """The learner's ``infra/``: its resource blocks, locals and variables' defaults."""

    folder: Path
    blocks: list[Block]
    locals: dict[str, Any]
    defaults: dict[str, Any]

    def written(self, step: str) -> list[Block]:
        """The blocks of ``step``'s type; ``CheckFailed`` naming its TODO when there are none."""
        kind, label, todo, number = BLOCKS[step]
        found = [block for block in self.blocks if block.kind == kind]
        if step == "workload_identity":
            found = [block for block in self.blocks if block.kind in _IAM_KINDS]
        if not found:
            raise CheckFailed(f"{self._todo(todo)}: the block under `# TODO: {todo}` is not written yet: "
                              f"write `resource \"{kind}\" ...` there (notebook 01, step {number}).")
        if label and label not in {block.label for block in found}:
            raise CheckFailed(f"{found[0].at}: call it `resource \"{kind}\" \"{label}\"`: the rest of infra/ "
                              f"(outputs.tf, the other blocks) refers to it as {kind}.{label}.")
        return [block for block in found if not label or block.label == label]

    def _todo(self, todo: str) -> str:
        for path in sorted(self.folder.glob("*.tf")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if f"# TODO: {todo}" in line:
                    return f"{self.folder.name}/{path.name}, line {number}"
        return f"{self.folder.name}/main.tf"

    def resolved(self, value: Any) -> Any:
        """``value`` with a ``local.NAME`` reference replaced by that local's value."""
        found = re.fullmatch(r"\$\{local\.(\w+)\}", value) if isinstance(value, str) else None
        return self.locals.get(found.group(1), value) if found else value


def read(infra: str | Path = "infra") -> Config:
    """The learner's Terraform, parsed; ``CheckFailed`` with the file, line and column where
    HCL cannot be read."""
    folder = Path(infra).resolve()
    blocks, local_values, defaults = [], {}, {}
    for path in sorted(folder.glob("*.tf")):
        shown = f"{folder.name}/{path.name}"
        try:
            parsed = terraform.parse(path)
        except Exception as exc:  # lark's errors carry the line and column
            line, column = getattr(exc, "line", None), getattr(exc, "column", None)
            where = f", line {line}, column {column}" if line else ""
            raise CheckFailed(f"{shown}{where}: Terraform cannot read the file from here on: check this line and "
                              "the ones above it for a missing value, brace or quote.") from None
        lines = path.read_text().splitlines()
        for entry in parsed.get("resource", []):
            for kind, named in entry.items():
                for label, body in named.items():
                    line = next((n for n, text in enumerate(lines, 1)
                                 if re.match(rf'\s*resource\s+"{kind}"\s+"{label}"', text)), 0)
                    blocks.append(Block(kind, label, body, shown, line, _settings(shown, lines, line)))
        for entry in parsed.get("locals", []):
            local_values.update(entry)
        for entry in parsed.get("variable", []):
            defaults.update({name: body.get("default") for name, body in entry.items()})
    return Config(folder, blocks, local_values, defaults)


def _settings(shown: str, lines: list[str], header: int) -> dict[str, int]:
    """The line of each setting of the block whose ``resource`` line is ``header``: its own
    settings only, not those of the blocks inside it. ``CheckFailed`` for one set twice, which
    python-hcl2 reads as the last and Terraform refuses."""
    found: dict[str, int] = {}
    depth = 0
    for number in range(header, len(lines) + 1 if header else 0):
        code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', lines[number - 1]).split("#")[0].split("//")[0]
        setting = re.match(r"\s*(\w+)\s*(=|\{)", code)
        if depth == 1 and setting:
            name = setting[1]
            if name in found and setting[2] == "=":
                raise CheckFailed(f"{shown}, line {number}: `{name}` is set twice in this block, here and on line "
                                  f"{found[name]}; Terraform takes each setting once (Attribute redefined). Keep the "
                                  "one you mean and delete the other.")
            found.setdefault(name, number)
        depth += code.count("{") - code.count("}")
        if depth <= 0 and number > header:
            break
    return found


@progress.verdict("01 files")
def files(infra: str | Path = "infra") -> None:
    """Every ``.tf`` file parses, and is laid out as ``terraform fmt`` writes it (where Terraform
    is installed: its own parser, whose messages name the line, reads them first)."""
    folder = Path(infra).resolve()
    layout = "not checked for layout (Terraform is not installed here)"
    if shutil.which("terraform"):
        done = subprocess.run([*terraform.fmt_check(folder).argv], capture_output=True, text=True, timeout=120)
        if done.returncode == 3:  # read, but laid out otherwise: it lists the files
            unformatted = ", ".join(f"{folder.name}/{Path(line).name}" for line in done.stdout.split())
            raise CheckFailed(f"{unformatted or folder.name} is not laid out as Terraform writes it: run "
                              f"`terraform fmt {folder.name}` in a terminal (it fixes the indentation and the "
                              "alignment of `=`), then this cell again.")
        if done.returncode:
            raise CheckFailed(_unreadable(folder.name, done.stderr or done.stdout))
        layout = "laid out as `terraform fmt` writes them"
    config = read(folder)
    print(f"✅ {len(config.blocks)} resource blocks in {config.folder.name}/ read, {layout}.")


def _unreadable(folder: str, said: str) -> str:
    """Terraform's first parse error, as one line: the file and line, what, and its whole detail
    (which Terraform wraps over lines), its own file references said as lines."""
    text = re.sub(r"^[│╷╵] ?", "", said, flags=re.MULTILINE)
    title = re.search(r"Error: (.+)", text)
    where = re.search(r"on (\S+) line (\d+)", text)
    detail = re.search(r"\n\s*\d+:.*\n\s*\n((?:.*\S.*\n?)+)", text)
    at = f"{folder}/{Path(where[1]).name}, line {where[2]}" if where else folder
    what = title[1].strip() if title else "a syntax error"
    if detail is None:
        return f"{at}: Terraform cannot read this ({what}). Check that line for a missing value, brace or quote."
    why = re.sub(r"\S+\.tf:(\d+),\d+(-\d+)?", r"line \1", " ".join(detail[1].split())).rstrip(".")
    return f"{at}: Terraform cannot read this ({what}): {why}. Mend that line, then run this cell again."


@progress.verdict("01 cluster")
def cluster(infra: str | Path = "infra") -> None:
    """The cluster: Autopilot, named ``var.cluster_name``, in ``var.region``, deletable, with the
    Gateway API, after the Kubernetes Engine API."""
    [block] = read(infra).written("cluster")
    gateway = block.body.get("gateway_api_config") or [{}]
    _require(block, [
        (block.has("enable_autopilot", True), "enable_autopilot",
         "the cluster is not in Autopilot mode: add `enable_autopilot = true`. "
         "In Standard mode you would create and size node pools yourself, a GPU pool for Gemma among them."),
        (block.has("name", "${var.cluster_name}"), "name",
         "write `name = var.cluster_name` (gradio-chat-cluster, which "
         "the later notebooks' kubectl and gcloud commands name)."),
        (block.has("location", "${var.region}"), "location",
         "write `location = var.region`: a regional cluster in REGION "
         "(a zone makes a zonal cluster, and a region written out would not follow REGION)."),
        (block.has("deletion_protection", False), "deletion_protection",
         "add `deletion_protection = false`: the provider refuses to "
         "delete a protected cluster, and notebook 07 must delete it."),
        (gateway[0].get("channel") == "CHANNEL_STANDARD", "gateway_api_config", "add `gateway_api_config { channel = "
         "\"CHANNEL_STANDARD\" }`: notebook 05's Gateway, the app's HTTPS load balancer, needs the Gateway API."),
        (block.waits_for('google_project_service.enabled["container"]'), "depends_on", "add `depends_on = "
         "[google_project_service.enabled[\"container\"]]`: without it Terraform may create the cluster before the "
         "Kubernetes Engine API is on, and Google refuses it (SERVICE_DISABLED)."),
    ])
    print(f"✅ {block.kind}.{block.label}: Autopilot, named var.cluster_name, in var.region, deletable, Gateway API "
          "on, after the Kubernetes Engine API.")


@progress.verdict("01 database")
def database(infra: str | Path = "infra") -> None:
    """The database: ``chat-app-db``, Native mode, at ``var.firestore_location``, deleted with the rest."""
    [block] = read(infra).written("database")
    _require(block, [
        (block.has("name", "chat-app-db"), "name", "name it \"chat-app-db\": the app's settings name it "
         "(HYBRIDCHAT_STORE_URL=firestore://chat-app-db in deploy/chat-deploy.yaml)."),
        (block.has("type", "FIRESTORE_NATIVE"), "type",
         f"write `type = \"FIRESTORE_NATIVE\"`, not {block.body.get('type')!r}: "
         "Native mode stores documents in collections, which the app's Firestore client reads; Datastore mode "
         "speaks only the older Datastore API."),
        (block.has("location_id", "${var.firestore_location}"), "location_id",
         "write `location_id = var.firestore_location` "
         "(nam5, the US multi-region, unless the variables say otherwise)."),
        (block.has("deletion_policy", "DELETE"), "deletion_policy",
         "add `deletion_policy = \"DELETE\"`: else notebook 07's "
         "`terraform destroy` leaves the database, and every chat in it, behind."),
        (block.waits_for('google_project_service.enabled["firestore"]'), "depends_on", "add `depends_on = "
         "[google_project_service.enabled[\"firestore\"]]`: the database must wait until the Firestore API is on."),
    ])
    print(f"✅ {block.kind}.{block.label}: chat-app-db, Native mode, at var.firestore_location, deleted by "
          "terraform destroy, after the Firestore API.")


@progress.verdict("01 document")
def document(infra: str | Path = "infra") -> None:
    """The document ``chat_sessions/initialize``, made once the database exists."""
    [block] = read(infra).written("document")
    database = str(block.body.get("database", ""))
    _require(block, [
        (block.has("collection", "chat_sessions"), "collection",
         "write `collection = \"chat_sessions\"`: the collection the "
         "app writes its chats to."),
        (block.has("document_id", "initialize"), "document_id", "write `document_id = \"initialize\"`."),
        ("google_firestore_database.chat" in database or block.waits_for("google_firestore_database.chat"),
         "database",
         "the document does not wait for the database: Terraform creates blocks in parallel unless one refers to "
         "another, so it would write into a database that does not exist yet. Write `database = "
         "google_firestore_database.chat.name`: a reference Terraform waits for."),
        ("fields" in block.body, "fields",
         "add `fields`, the document's content: e.g. "
         "`fields = jsonencode({ created_by = { stringValue = \"terraform\" } })`."),
    ])
    print(f"✅ {block.kind}.{block.label}: chat_sessions/initialize, in google_firestore_database.chat once it exists.")


@progress.verdict("01 identity")
def workload_identity(infra: str | Path = "infra") -> None:
    """The app's Kubernetes service account, as a Workload Identity principal of this project's
    pool, holds ``roles/aiplatform.user`` and ``roles/datastore.user``, and nothing broader."""
    config = read(infra)
    grants = config.written("workload_identity")
    roles: dict[str, Block] = {}
    for block in grants:
        members = block.body.get("members") if "members" in block.body else [block.body.get("member")]
        role = str(block.body.get("role", ""))
        for member in (str(config.resolved(m)) for m in members or []):
            if not _for_the_app(member):
                continue
            if role in BROAD_ROLES:
                raise CheckFailed(
                    f"{block.at_setting('role')}: {role} is refused for the app's principal: whoever takes over the "
                    "app's pod would hold it too, and with it change far more than the app does (the cluster, the "
                    "database, IAM itself). The app calls only Gemini and Firestore: grant roles/aiplatform.user and "
                    "roles/datastore.user, each in its own block.")
            _principal(block, member, config.defaults)
            roles[role] = block
    if not roles:
        raise CheckFailed(f"{grants[0].at}: no grant names the app's principal: write `member = \"{PRINCIPAL}\"` "
                          "(or a local holding it).")
    for role, why in APP_ROLES.items():
        if role not in roles:
            raise CheckFailed(f"{grants[0].at}: the app's principal lacks {role}: {why}.")
    extra = sorted(set(roles) - set(APP_ROLES))
    if extra:
        raise CheckFailed(
            f"{roles[extra[0]].at_setting('role')}: {extra[0]} is more than the app needs: it calls only Gemini and "
            "Firestore (roles/aiplatform.user, roles/datastore.user). Least privilege: leave it out.")
    for block in roles.values():
        if not block.waits_for("google_container_cluster.primary"):
            raise CheckFailed(
                f"{block.at_setting('depends_on')}: add `google_container_cluster.primary` to its `depends_on`: the "
                "workload identity pool PROJECT_ID.svc.id.goog exists only once the project has a GKE cluster.")
    print("✅ the app's Kubernetes service account, gradio-chat-ksa in namespace default, holds roles/aiplatform.user "
          "and roles/datastore.user through Workload Identity, and nothing broader.")


def _for_the_app(member: str) -> bool:
    return "svc.id.goog" in member or "principal://" in member or "gradio-chat-ksa" in member


def _principal(block: Block, member: str, defaults: dict[str, Any]) -> None:
    """``CheckFailed`` unless ``member`` is the app's Workload Identity principal, in this project's pool."""
    at = block.at_setting("member" if "member" in block.lines else "members")
    written = member.replace("${var.namespace}", str(defaults.get("namespace", "default")))
    written = written.replace("${var.ksa_name}", str(defaults.get("ksa_name", "gradio-chat-ksa")))
    found = _PRINCIPAL.fullmatch(written)
    if found is None:
        raise CheckFailed(f"{at}: {member!r} is not a Workload Identity principal: write it as "
                          f"\"{PRINCIPAL}\" (no Google service account, no key).")
    if (found["ns"], found["sa"]) != ("default", "gradio-chat-ksa"):
        raise CheckFailed(f"{at}: the principal names ns/{found['ns']}/sa/{found['sa']}, but the app runs as "
                          "gradio-chat-ksa in namespace default (deploy/chat-deploy.yaml): a grant to another "
                          "account gives the app nothing, and its calls fail with 403 PERMISSION_DENIED.")
    if (found["number"], found["pool"]) != ("${var.project_number}", "${var.project_id}"):
        raise CheckFailed(f"{at}: build the principal from `${{var.project_number}}` and `${{var.project_id}}`"
                          " (this project's number, and its pool PROJECT_ID.svc.id.goog), not from values written in: "
                          "the same files then work in any learner's project.")


def _require(block: Block, rules: list[tuple[bool, str, str]]) -> None:
    """The first rule that does not hold, as a hint at its setting's line (the block's, if missing)."""
    for holds, setting, hint in rules:
        if not holds:
            raise CheckFailed(f"{block.at_setting(setting)}: {hint}")


@progress.verdict("01 in the cloud")
def in_the_cloud(project_id: str, project_number: str, region: str, cluster_name: str) -> None:
    """After ``terraform apply``: what the four blocks made, as the project reports it (gcloud's
    ``describe`` and ``get-iam-policy``, Firestore's client): each ✅, or ❌ with what is off."""
    from hybridchat.lab.shell import CommandFailed, command, run

    def described(*argv: str) -> dict[str, Any]:
        try:
            said = run(command("gcloud", *argv, "--format=json"), echo=False)
            answer: dict[str, Any] = json.loads(said[said.find("{"):])  # after any warning gcloud wrote first
        except CommandFailed as failed:
            return {"error": str(failed).strip().splitlines()[-1]}
        except ValueError:
            return {"error": "gcloud's answer is not the JSON asked for"}
        return answer

    made = described("container", "clusters", "describe", cluster_name, f"--region={region}", f"--project={project_id}")
    database = described("firestore", "databases", "describe", "--database=chat-app-db", f"--project={project_id}")
    policy = described("projects", "get-iam-policy", project_id)
    principal = (f"principal://iam.googleapis.com/projects/{project_number}/locations/global/workloadIdentityPools/"
                 f"{project_id}.svc.id.goog/subject/ns/default/sa/gradio-chat-ksa")
    held = {binding["role"] for binding in policy.get("bindings", []) if principal in binding.get("members", [])}
    found = [
        (made.get("autopilot", {}).get("enabled") is True and made.get("location") == region
         and made.get("status") == "RUNNING",
         f"cluster {cluster_name}: Autopilot, in {region}, running",
         made.get("error") or f"autopilot {made.get('autopilot')}, {made.get('location')}, {made.get('status')}"),
        (database.get("type") == "FIRESTORE_NATIVE", "database chat-app-db: Native mode",
         database.get("error") or f"type {database.get('type')}"),
        (_initialized(project_id), "document chat_sessions/initialize: there", "not found"),
        (held == set(APP_ROLES), "the app's principal: roles/aiplatform.user and roles/datastore.user, no more",
         policy.get("error") or f"it holds {sorted(held) or 'no role'}"),
    ]
    for ok, what, otherwise in found:
        print(f"✅ {what}" if ok else f"❌ {what}: {otherwise}")
    wrong = [what for ok, what, _ in found if not ok]
    if wrong:
        raise CheckFailed(f"the project does not hold {wrong[0]} yet: read the ❌ lines above, fix the block in "
                          "infra/main.tf, and run the plan and apply cell again.")


def _initialized(project_id: str) -> bool:
    """Whether ``chat_sessions/initialize`` is in ``chat-app-db``, as Firestore's client reads it."""
    from google.cloud import firestore

    client = firestore.Client(project=project_id, database="chat-app-db")
    try:
        return bool(client.collection("chat_sessions").document("initialize").get(timeout=30).exists)
    except Exception:  # not reachable, no permission: said as "not found" with the other lines
        return False
    finally:
        client.close()
