"""The workshop's Google Cloud, kubectl and Skaffold commands, built exactly as the codelab runs them.

Each function returns a ``Command`` (run it with ``hybridchat.lab.shell.run``), so the
notebooks and the tests share one definition of every command line.
"""

from __future__ import annotations

from pathlib import Path

from hybridchat.lab.shell import Command, command

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SETUP_APIS = ("cloudresourcemanager.googleapis.com", "storage.googleapis.com")


def current_project() -> Command:
    return command("gcloud", "config", "get-value", "project")


def project_number(project_id: str) -> Command:
    return command("gcloud", "projects", "describe", project_id, "--format=value(projectNumber)")


def enable_setup_apis(project_id: str) -> Command:
    return command("gcloud", "services", "enable", *SETUP_APIS, f"--project={project_id}")


def build_bucket(project_id: str) -> str:
    return f"gs://{project_id}_cloudbuild"


def create_build_bucket(project_id: str, region: str) -> Command:
    return command("gcloud", "storage", "buckets", "create", build_bucket(project_id), f"--project={project_id}", f"--location={region}")


def delete_build_bucket(project_id: str) -> Command:
    return command("gcloud", "storage", "rm", "--recursive", build_bucket(project_id), f"--project={project_id}")


def get_credentials(cluster_name: str, region: str, project_id: str) -> Command:
    return command("gcloud", "container", "clusters", "get-credentials", cluster_name, f"--region={region}", f"--project={project_id}")


def create_hf_secret(token: str) -> Command:
    """The Hugging Face token secret Gemma's pod reads; the token never shows in output."""
    return command(
        "kubectl", "create", "secret", "generic", "hf-secret", f"--from-literal=hf_api_token={token}",
        secrets=(token,),
    )


def apply(manifest: str | Path) -> Command:
    return command("kubectl", "apply", "-f", str(DEPLOY / manifest))


def delete(manifest: str | Path) -> Command:
    return command("kubectl", "delete", "--ignore-not-found", "-f", str(DEPLOY / manifest))


def delete_hf_secret() -> Command:
    return command("kubectl", "delete", "secret", "hf-secret", "--ignore-not-found")


def gemma_pods() -> Command:
    return command("kubectl", "get", "pods", "-l", "app=gemma-server", "-o", "json")


def gemma_events() -> Command:
    return command("kubectl", "get", "events", "--field-selector", "involvedObject.kind=Pod", "--sort-by=.lastTimestamp")


def port_forward_gemma(local_port: int = 8000) -> Command:
    return command("kubectl", "port-forward", "service/gemma-service", f"{local_port}:8000")


def registry(project_id: str, region: str) -> str:
    """Skaffold's --default-repo: the Artifact Registry repository Terraform creates."""
    return f"{region}-docker.pkg.dev/{project_id}/chat-app-repo"


def skaffold_run(project_id: str, region: str) -> Command:
    return command("skaffold", "run", f"--default-repo={registry(project_id, region)}", cwd=ROOT)


def load_balancer_ip() -> Command:
    return command(
        "kubectl", "get", "service", "gradio-chat-service",
        "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}",
    )


def pod_status(pods_json: str) -> tuple[str, str]:
    """(phase, detail) of the Gemma pod from ``kubectl get pods -o json``."""
    import json

    items = json.loads(pods_json).get("items", [])
    if not items:
        return "Missing", "no Gemma pod yet: did `kubectl apply` run?"
    pod = items[0]
    phase = pod.get("status", {}).get("phase", "Unknown")
    conditions = {c["type"]: c for c in pod.get("status", {}).get("conditions", [])}
    if phase == "Running" and conditions.get("Ready", {}).get("status") == "True":
        return "Ready", "Gemma is serving"
    scheduled = conditions.get("PodScheduled", {})
    if scheduled.get("status") == "False":
        return phase, f"waiting for a GPU node: {scheduled.get('message', 'unschedulable')}"
    return phase, "loading the model" if phase == "Running" else phase


def wait_for_gemma(timeout: float = 3600, poll: float = 15) -> None:
    """Wait until the Gemma pod is ready, with a progress bar and the pod's events while it waits."""
    import time

    from tqdm.auto import tqdm

    from hybridchat.lab.shell import run

    started = time.monotonic()
    last_events = 0.0
    with tqdm(total=int(timeout), desc="Gemma pod", unit="s") as bar:
        while True:
            phase, detail = pod_status(run(gemma_pods(), echo=False))
            bar.n = int(time.monotonic() - started)
            bar.set_postfix_str(f"{phase}: {detail}"[:80])
            if phase == "Ready":
                return
            if phase == "Pending" and time.monotonic() - last_events > 120:
                print(run(gemma_events(), echo=False)[-2000:])
                last_events = time.monotonic()
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"Gemma is not ready after {timeout:g} s ({phase}: {detail}); chat with Gemini meanwhile")
            time.sleep(poll)
