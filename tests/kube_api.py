"""Just enough of a Kubernetes API server on 127.0.0.1 for `kubectl apply --dry-run=client`:
the discovery documents, and 404 for every object (so each one would be created)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def _resources(group_version: str, kinds: dict[str, tuple[str, bool]]) -> dict:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [
            {"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": _VERBS}
            for name, (kind, namespaced) in kinds.items()
        ],
    }


DISCOVERY = {
    "/api": {"kind": "APIVersions", "versions": ["v1"],
             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": group, "versions": [{"groupVersion": f"{group}/{version}", "version": version}],
         "preferredVersion": {"groupVersion": f"{group}/{version}", "version": version}}
        for group, version in (("apps", "v1"), ("autoscaling", "v2"), ("policy", "v1"),
                               ("rbac.authorization.k8s.io", "v1"), ("gateway.networking.k8s.io", "v1"),
                               ("networking.gke.io", "v1"), ("inference.networking.k8s.io", "v1"),
                               ("monitoring.googleapis.com", "v1"))]},
    "/api/v1": _resources("v1", {
        "services": ("Service", True), "serviceaccounts": ("ServiceAccount", True),
        "configmaps": ("ConfigMap", True), "secrets": ("Secret", True), "namespaces": ("Namespace", False),
    }),
    "/apis/apps/v1": _resources("apps/v1", {"deployments": ("Deployment", True)}),
    "/apis/autoscaling/v2": _resources("autoscaling/v2", {"horizontalpodautoscalers": ("HorizontalPodAutoscaler", True)}),
    "/apis/policy/v1": _resources("policy/v1", {"poddisruptionbudgets": ("PodDisruptionBudget", True)}),
    "/apis/rbac.authorization.k8s.io/v1": _resources("rbac.authorization.k8s.io/v1", {
        "roles": ("Role", True), "rolebindings": ("RoleBinding", True),
    }),
    # GKE's Gateway controller and its policies (CRDs on a real cluster).
    "/apis/gateway.networking.k8s.io/v1": _resources("gateway.networking.k8s.io/v1", {
        "gateways": ("Gateway", True), "httproutes": ("HTTPRoute", True),
    }),
    "/apis/networking.gke.io/v1": _resources("networking.gke.io/v1", {
        "healthcheckpolicies": ("HealthCheckPolicy", True), "gcpbackendpolicies": ("GCPBackendPolicy", True),
    }),
    # The Gateway API Inference Extension's pool, and Managed Service for Prometheus' scrape config.
    "/apis/inference.networking.k8s.io/v1": _resources("inference.networking.k8s.io/v1", {
        "inferencepools": ("InferencePool", True),
    }),
    "/apis/monitoring.googleapis.com/v1": _resources("monitoring.googleapis.com/v1", {
        "podmonitorings": ("PodMonitoring", True),
    }),
    "/version": {"major": "1", "minor": "34", "gitVersion": "v1.34.0"},
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        doc = DISCOVERY.get(self.path.split("?")[0])
        status = 200 if doc is not None else 404
        if doc is None:
            doc = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def fake_cluster(directory: Path) -> Iterator[Path]:
    """Serve the fake API; yield a kubeconfig that points kubectl at it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = directory / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\nusers: []\n"
        f"clusters: [{{name: fake, cluster: {{server: 'http://127.0.0.1:{server.server_port}'}}}}]\n"
        "contexts: [{name: fake, context: {cluster: fake, namespace: default}}]\n"
    )
    try:
        yield kubeconfig
    finally:
        server.shutdown()
        server.server_close()
