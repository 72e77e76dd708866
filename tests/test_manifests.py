"""The Kubernetes manifests: valid for GKE's Kubernetes, parsed by kubectl, and holding what the
workshop needs of them (GPUs, signed ids, scaling, the Gateway behind sign-in, a locked-down app)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from fault_server import REPLY
from iap_double import KEYS_PATH, IapKeys, proxy_app
from infra_files import DEPLOY, ROOT, documents, manifest, resource
from kube_api import fake_cluster
from test_iap import AUDIENCE, turn
from test_reliability import visitor

from bench.servers import serving
from hybridchat.backends.vllm_client import HEALTH_PATH
from hybridchat.config import Settings
from hybridchat.iap import ASSERTION_HEADER
from hybridchat.lab import gcp, workshop
from hybridchat.lab.local import BackgroundServer, free_port
from hybridchat.templates import template_for_model

# The Kubernetes minor that GKE's regular channel runs.
KUBERNETES_VERSION = "1.34.0"
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))
# GKE's own kinds, which kubernetes-validate has no schema for: checked by kubectl's dry run
# against their API groups (kube_api.py) and by the contract tests below.
GKE_KINDS = {"Gateway", "HTTPRoute", "HealthCheckPolicy", "GCPBackendPolicy"}
# Kinds of CRDs whose published schemas tests/data/crds/ keeps: the Gateway API Inference
# Extension's v1.3.0 (config/crd/bases/) and prometheus-engine's v0.17.2 (charts/operator/crds/).
CRDS = ROOT / "tests" / "data" / "crds"


def crd_schemas() -> dict[tuple[str, str], dict]:
    """Each kept CRD's schema, by (apiVersion, kind), strict as kubernetes-validate's: an unknown
    field is an error (the API server would drop it without a word)."""
    schemas = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            schemas[(f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])] = (
                strict(version["schema"]["openAPIV3Schema"]))
    return schemas


def strict(schema: dict) -> dict:
    """``schema`` with no field allowed beyond those it names, at every level."""
    schema = {key: [strict(s) for s in value] if key in ("allOf", "anyOf", "oneOf") else value
              for key, value in schema.items()}
    if "items" in schema:
        schema["items"] = strict(schema["items"])
    if "properties" in schema:
        schema["properties"] = {name: strict(part) for name, part in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
    return schema



# --- Kubernetes manifests ---------------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifests_validate_against_the_gke_kubernetes_version(path):
    schemas = crd_schemas()
    for doc in documents(path):
        if (doc["apiVersion"], doc["kind"]) in schemas:
            jsonschema.validate(doc, schemas[(doc["apiVersion"], doc["kind"])])
            continue
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


GEMMA_MANIFESTS = sorted(DEPLOY.glob("gemma*.yaml"))


def server_args(container: dict) -> dict[str, str]:
    """A vLLM container's ``--name=value`` arguments (a bare flag's value: ``""``)."""
    return dict((*arg.removeprefix("--").split("=", 1), "")[:2] for arg in container["args"])


@pytest.mark.parametrize("path", GEMMA_MANIFESTS, ids=lambda p: p.name)
def test_gemma_gets_the_gpus_its_tensor_parallelism_uses(path):
    deployment = next(d for d in documents(path) if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = server_args(container)
    gpus = container["resources"]["requests"]["nvidia.com/gpu"]
    assert gpus == container["resources"]["limits"]["nvidia.com/gpu"] == args["tensor-parallel-size"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert args["model"] in ("google/gemma-3-12b-it", "google/gemma-4-E4B-it") and int(args["max-model-len"]) > 0
    assert ":" in container["image"] and not container["image"].endswith(":latest")
    token = next(e for e in container["env"] if e["name"] == "HUGGING_FACE_HUB_TOKEN")["valueFrom"]["secretKeyRef"]
    assert {token["name"], token["key"]} == {gcp.HF_SECRET, "hf_api_token"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == HEALTH_PATH
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 20 * 60, "time to download the weights"


@pytest.mark.parametrize("choice", workshop.GEMMAS)
def test_each_gemma_choice_replaces_the_other_and_names_its_template(choice):
    path = DEPLOY / workshop.gemma_manifest(choice)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in documents(path)}
    assert kinds == {("Deployment", "vllm-gemma-deployment"), ("Service", "gemma-service")}, (
        "the names 04-08, the app and 07's clean-up use, whichever Gemma runs")
    args = server_args(next(d for d in documents(path) if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0])
    template = template_for_model(args["served-model-name"])
    assert template.name == ("gemma4" if choice.startswith("gemma-4") else "gemma"), "the app learns it from the name"
    assert (args.get("reasoning-parser") == "gemma4") == bool(template.thought), "a thought kept out of the answer"
    with pytest.raises(workshop.UnknownGemma, match="gemma-3-12b"):
        workshop.gemma_manifest("gemma-5")


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
    targets = [d["spec"]["targetRef"]["name"] for path in MANIFESTS for d in documents(path) if d["kind"] == "GCPBackendPolicy"]
    assert len(targets) == len(set(targets)), "GKE takes one GCPBackendPolicy per Service"
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


def test_the_rooms_gemma_wants_its_key_and_answers_over_https_only():
    room = DEPLOY / "gemma3-12b-room.yaml"
    container = manifest("Deployment", "vllm-gemma-deployment", room)["spec"]["template"]["spec"]["containers"][0]
    key = next(e for e in container["env"] if e["name"] == "VLLM_API_KEY")  # what vLLM reads for --api-key
    assert key["valueFrom"]["secretKeyRef"] == {"name": gcp.ROOM_GEMMA_KEY, "key": "key"}, "the Secret notebook 05 names"
    assert not any("api-key" in arg for arg in container["args"]), "the key in no argument: `ps` would show it"
    assert "--max-num-seqs=100" in container["args"]
    service = manifest("Service", "gemma-service", room)
    gateway = manifest("Gateway", "gemma-room-gateway", room)["spec"]
    (listener,) = gateway["listeners"]
    assert (listener["protocol"], listener["port"]) == ("HTTPS", 443), "the key never crosses the internet in clear"
    assert listener["tls"]["options"]["networking.gke.io/pre-shared-certs"] == "gemma-room-cert"
    assert gateway["addresses"] == [{"type": "NamedAddress", "value": "gemma-room-ip"}]
    for made in ("addresses create gemma-room-ip", "ssl-certificates create gemma-room-cert",
                 f"secret generic {gcp.ROOM_GEMMA_KEY}"):
        assert made in room.read_text(), f"the recipe in its comment makes what it uses: {made}"
    route = manifest("HTTPRoute", "gemma-room-route", room)["spec"]
    assert route["rules"][0]["backendRefs"] == [{"name": "gemma-service", "port": service["spec"]["ports"][0]["port"]}]
    target = {"group": "", "kind": "Service", "name": "gemma-service"}
    health = manifest("HealthCheckPolicy", "gemma-room-health", room)["spec"]
    assert health["targetRef"] == target and health["default"]["config"]["httpHealthCheck"]["requestPath"] == (
        container["readinessProbe"]["httpGet"]["path"]) == HEALTH_PATH, "an open route: /v1 ones want the key"
    policy = manifest("GCPBackendPolicy", "gemma-room-backend", room)["spec"]
    assert policy["targetRef"] == target and policy["default"]["timeoutSec"] >= 300, "a streamed reply is one response"


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


def test_the_rooms_progress_service_is_under_the_rooms_gateway_with_the_rooms_key():
    progress = DEPLOY / "room-progress.yaml"
    pod = manifest("Deployment", "room-progress", progress)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    keys = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert keys == {"HYBRIDCHAT_VLLM_API_KEY": {"name": gcp.ROOM_GEMMA_KEY, "key": "key"},
                    "HYBRIDCHAT_ROOM_INSTRUCTOR_KEY": {"name": "room-instructor-key", "key": "key"}}
    assert not any("key" in arg.lower() for arg in container["args"]), "no key in the process list"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsNonRoot"]
    (route,) = manifest("HTTPRoute", "room-progress-route", progress)["spec"]["rules"]
    assert manifest("HTTPRoute", "room-progress-route", progress)["spec"]["parentRefs"] == [
        {"name": "gemma-room-gateway"}], "the room's Gemma's address"
    assert route["matches"] == [{"path": {"type": "PathPrefix", "value": "/progress"}}]
    service = manifest("Service", "room-progress-service", progress)["spec"]
    assert route["backendRefs"] == [{"name": "room-progress-service", "port": service["ports"][0]["port"]}]
    health = manifest("HealthCheckPolicy", "room-progress-health", progress)["spec"]["default"]["config"]
    assert health["httpHealthCheck"]["requestPath"] == container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert health["httpHealthCheck"]["port"] == service["ports"][0]["port"]


@pytest.mark.slow
def test_the_progress_containers_arguments_serve_a_firestore_board(firestore_emulator, tmp_path):
    """The container's own arguments (host and port made local), on the Firestore emulator: a
    verdict in with the room's key, on the page with the instructor's."""
    from test_room_progress import INSTRUCTOR, KEY, board_of

    firestore_emulator.reset()
    (container,) = manifest("Deployment", "room-progress", DEPLOY / "room-progress.yaml")["spec"]["template"][
        "spec"]["containers"]
    port = free_port()
    args = [{"0.0.0.0": "127.0.0.1", "8090": str(port)}.get(arg, arg) for arg in container["args"]]
    env = {"HYBRIDCHAT_VLLM_API_KEY": KEY, "HYBRIDCHAT_ROOM_INSTRUCTOR_KEY": INSTRUCTOR,
           "GOOGLE_CLOUD_PROJECT": firestore_emulator.project}
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "serve.log").open("wb") as log, serving([sys.executable, "-m", "hybridchat.cli", *args[1:]],
                                                             f"{url}/healthz", env, log):
        posted = httpx.post(f"{url}/progress", headers={"Authorization": f"Bearer {KEY}"},
                            json={"attendee": "Ann", "exercise": "04 Gemma", "status": "ok"})
        assert posted.status_code == 200, posted.text
        assert board_of(url) == {("Ann", "04 Gemma"): "✅"}


def test_the_cloud_doubles_apply_the_progress_manifest(tmp_path):
    import cloud_doubles

    with fake_cluster(tmp_path) as kubeconfig:
        state = cloud_doubles.initial_state("instructor-project", kube_context="gke_instructor_us-central1_room")
        cloud_doubles.install(tmp_path / "bin", tmp_path / "state", state, kubeconfig)
        applied = subprocess.run([str(tmp_path / "bin" / "kubectl"), "apply", "-f", str(DEPLOY / "room-progress.yaml")],
                                 capture_output=True, text=True, timeout=60)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines() == [
        "deployment.apps/room-progress created", "service/room-progress-service created",
        "httproute.gateway.networking.k8s.io/room-progress-route created",
        "healthcheckpolicy.networking.gke.io/room-progress-health created"]
