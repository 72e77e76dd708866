"""The room's Gemma on more than one server (deploy/room-gemma-pool.yaml): its InferencePool,
endpoint picker, Gateway, scrape and HPA hold together with the room's manifest and with what
vLLM exports, and its CRDs' kinds validate against their published schemas."""

from __future__ import annotations

import inspect
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from infra_files import DEPLOY, manifest
from kube_api import fake_cluster
from test_manifests import crd_schemas

from hybridchat import vllm_metrics
from hybridchat.backends.vllm_client import HEALTH_PATH
from hybridchat.cli_workshop import rehearse as room_rehearse
from hybridchat.config import Settings

POOL = DEPLOY / "room-gemma-pool.yaml"


def test_a_misspelled_field_of_a_crds_kind_is_refused():
    pool = manifest("InferencePool", "gemma-room-pool", POOL)
    schema = crd_schemas()[(pool["apiVersion"], "InferencePool")]
    misspelled = {**pool, "spec": {**pool["spec"], "targetPort": 8000}}
    with pytest.raises(jsonschema.ValidationError, match="targetPort"):
        jsonschema.validate(misspelled, schema)


def test_the_rooms_pool_routes_to_the_rooms_vllm_pods_and_scales_on_vllms_queue():
    room, pool_file = DEPLOY / "gemma3-12b-room.yaml", POOL
    gemma = manifest("Deployment", "vllm-gemma-deployment", room)["spec"]["template"]
    (port,) = gemma["spec"]["containers"][0]["ports"]
    pool = manifest("InferencePool", "gemma-room-pool", pool_file)["spec"]
    assert pool["selector"]["matchLabels"].items() <= gemma["metadata"]["labels"].items(), "the room's vLLM pods"
    assert pool["targetPorts"] == [{"number": port["containerPort"]}]
    # The endpoint picker: its Service's gRPC port, picking for this pool, reading only what it must.
    picker = manifest("Service", pool["endpointPickerRef"]["name"], pool_file)["spec"]
    assert pool["endpointPickerRef"]["port"]["number"] in {p["port"] for p in picker["ports"]}
    epp = manifest("Deployment", pool["endpointPickerRef"]["name"], pool_file)["spec"]["template"]
    assert picker["selector"].items() <= epp["metadata"]["labels"].items()
    args = epp["spec"]["containers"][0]["args"]
    assert args[args.index("--pool-name") + 1] == "gemma-room-pool"
    config = manifest("ConfigMap", epp["spec"]["volumes"][0]["configMap"]["name"], pool_file)["data"]
    scorers = yaml.safe_load(config[Path(args[args.index("--config-file") + 1]).name])["plugins"]
    assert {"type": "prefix-cache-scorer"} in scorers and {"type": "queue-scorer"} in scorers
    role = manifest("Role", "gemma-room-pool-epp", pool_file)["rules"]
    assert {"inferencepools", "pods"} <= {r for rule in role for r in rule["resources"]}
    assert all(set(rule["verbs"]) == {"get", "watch", "list"} for rule in role), "it reads; it changes nothing"
    binding = manifest("RoleBinding", "gemma-room-pool-epp", pool_file)
    assert binding["subjects"][0]["name"] == epp["spec"]["serviceAccountName"]
    # In front: HTTPS on a regional Gateway (Inference Gateway's classes), routing to the pool.
    gateway = manifest("Gateway", "gemma-room-pool-gateway", pool_file)["spec"]
    assert gateway["gatewayClassName"] in ("gke-l7-regional-external-managed", "gke-l7-rilb")
    assert [(x["protocol"], x["port"]) for x in gateway["listeners"]] == [("HTTPS", 443)]
    route = manifest("HTTPRoute", "gemma-room-pool-route", pool_file)["spec"]
    assert route["parentRefs"] == [{"name": "gemma-room-pool-gateway"}]
    target = {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "gemma-room-pool"}
    assert route["rules"][0]["backendRefs"] == [target]
    health = manifest("HealthCheckPolicy", "gemma-room-pool-health", pool_file)["spec"]
    assert health["targetRef"] == target and health["default"]["config"]["httpHealthCheck"] == {
        "port": port["containerPort"], "requestPath": HEALTH_PATH}
    assert manifest("GCPBackendPolicy", "gemma-room-pool-backend", pool_file)["spec"]["targetRef"] == target
    # Scaled on vLLM's queue: scraped from its pods, in the name the engine exports (test_vllm_engine).
    scrape = manifest("PodMonitoring", "gemma-room-metrics", pool_file)["spec"]
    assert scrape["selector"] == pool["selector"]
    assert scrape["endpoints"] == [{"port": port["containerPort"], "path": "/metrics", "interval": "15s"}]
    scaler = manifest("HorizontalPodAutoscaler", "gemma-room", pool_file)["spec"]
    assert scaler["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vllm-gemma-deployment"}
    (metric,) = scaler["metrics"]
    assert metric["pods"]["metric"]["name"] == f"prometheus.googleapis.com|{vllm_metrics.WAITING}|gauge"
    waiting = float(metric["pods"]["target"]["averageValue"])
    assert waiting == inspect.signature(room_rehearse).parameters["queue_limit"].default, (
        "the queue `room rehearse` says is too long")
    assert waiting < Settings().auto_max_waiting, "the room scales out before Auto sends turns to Gemini"
    assert 1 == scaler["minReplicas"] < scaler["maxReplicas"]


def test_the_cloud_doubles_apply_the_rooms_pool(tmp_path):
    import cloud_doubles

    with fake_cluster(tmp_path) as kubeconfig:
        state = cloud_doubles.initial_state("instructor-project", kube_context="gke_instructor_us-central1_room")
        cloud_doubles.install(tmp_path / "bin", tmp_path / "state", state, kubeconfig)
        applied = subprocess.run([str(tmp_path / "bin" / "kubectl"), "apply", "-f",
                                  str(POOL)], capture_output=True, text=True, timeout=60)
    assert applied.returncode == 0, applied.stderr
    assert "inferencepool.inference.networking.k8s.io/gemma-room-pool created" in applied.stdout.splitlines()
    assert "horizontalpodautoscaler.autoscaling/gemma-room created" in applied.stdout.splitlines()
