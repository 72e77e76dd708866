"""The workshop's Google Cloud, kubectl and Skaffold commands, built exactly as the codelab runs them.

Each function returns a ``Command`` (run it with ``hybridchat.lab.shell.run``), so the
notebooks and the tests share one definition of every command line. The waits poll every
``HYBRIDCHAT_LAB_POLL_SECONDS`` (default 15).
"""

from __future__ import annotations

import os
import secrets
import shutil
from contextlib import closing
from getpass import getpass
from pathlib import Path

import httpx

from hybridchat.config import Settings
from hybridchat.lab.local import free_port
from hybridchat.lab.shell import Background, Command, ShownAlone, command, run

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SETUP_APIS = ("cloudresourcemanager.googleapis.com", "storage.googleapis.com")
APP_SERVICE = "gradio-chat-service"
HF_SECRET = "hf-secret"  # read by deploy/gemma3-12b-*.yaml
SESSION_SECRET = "gradio-chat-session"  # read by deploy/chat-deploy.yaml
IAP_CONFIG = "gradio-chat-iap"  # the ConfigMap that gives the app IAP's audience
OAUTH_SECRET = "gradio-chat-oauth"  # the OAuth client's secret, read by IAP (chat-iap-policy.yaml)
ROOM_GEMMA = "gemma-room"  # the ConfigMap with a room's Gemma URL, read by deploy/chat-deploy.yaml
ROOM_GEMMA_KEY = "gemma-room-key"  # the Secret with its key, read there too
OAUTH_CLIENT_PLACEHOLDER = "OAUTH_CLIENT_ID"
IAP_POLICY = "chat-iap-policy.yaml"
RENDERED = DEPLOY / "rendered"  # git-ignored: manifests with this project's values filled in
# git-ignored: the learner's package in the image's build context (deploy/Dockerfile copies it).
STAGED_LEARNER_CODE = DEPLOY / "learner" / "my_app"
APP_PORT = 7860


def poll_seconds() -> float:
    return float(os.environ.get("HYBRIDCHAT_LAB_POLL_SECONDS", "15"))


def hugging_face_token() -> str:
    """The Hugging Face token: ``HF_TOKEN`` if set, else asked (never shown, never saved)."""
    return os.environ.get("HF_TOKEN") or getpass("Hugging Face token (read access, Gemma licence accepted): ")


def current_project() -> Command:
    return command("gcloud", "config", "get-value", "project")


def active_account() -> Command:
    return command("gcloud", "auth", "list", "--filter=status:ACTIVE", "--format=value(account)")


def project_number(project_id: str) -> Command:
    return command("gcloud", "projects", "describe", project_id, "--format=value(projectNumber)")


def enable_setup_apis(project_id: str) -> Command:
    return command("gcloud", "services", "enable", *SETUP_APIS, f"--project={project_id}")


def build_bucket(project_id: str) -> str:
    return f"gs://{project_id}_cloudbuild"


def create_build_bucket(project_id: str, region: str) -> Command:
    return command(
        "gcloud", "storage", "buckets", "create", build_bucket(project_id), f"--project={project_id}",
        f"--location={region}",
    )


def delete_build_bucket(project_id: str) -> Command:
    return command("gcloud", "storage", "rm", "--recursive", build_bucket(project_id), f"--project={project_id}")


def get_credentials(cluster_name: str, region: str, project_id: str) -> Command:
    return command(
        "gcloud", "container", "clusters", "get-credentials", cluster_name, f"--region={region}",
        f"--project={project_id}",
    )


def create_hf_secret(token: str) -> Command:
    """The Hugging Face token secret Gemma's pod reads; the token never shows in output."""
    return command(
        "kubectl", "create", "secret", "generic", HF_SECRET, f"--from-literal=hf_api_token={token}",
        secrets=(token,),
    )


def secret_exists(name: str) -> Command:
    """Prints the Secret's name if it exists (else nothing)."""
    return command("kubectl", "get", "secret", name, "--ignore-not-found", "-o", "name")


def delete_secret(name: str) -> Command:
    return command("kubectl", "delete", "secret", name, "--ignore-not-found")


class RoomGemmaUnavailable(ShownAlone, RuntimeError):
    """The room's Gemma does not answer this notebook; the message says why."""


def check_room_gemma(settings: Settings) -> str:
    """That the room's Gemma answers, with this attendee's key: what it serves, else why not."""
    from hybridchat.backends.vllm_client import VllmClient

    with closing(VllmClient.from_settings(settings)) as client:
        health = client.health()
    if not health.ok:
        raise RoomGemmaUnavailable(health.detail)
    return health.detail


def use_room_gemma(url: str, key: str | None) -> list[Command]:
    """The app's pods reach the room's Gemma instead of their own: its URL in a ConfigMap and its
    key in a Secret (made anew), which ``deploy/chat-deploy.yaml`` reads when they exist."""
    steps = [delete_configmap(ROOM_GEMMA),
             command("kubectl", "create", "configmap", ROOM_GEMMA, f"--from-literal=url={url}"),
             delete_secret(ROOM_GEMMA_KEY)]
    if key:
        steps.append(command("kubectl", "create", "secret", "generic", ROOM_GEMMA_KEY, f"--from-literal=key={key}",
                             secrets=(key,)))
    return steps


def create_session_secret() -> Command:
    """The key every app replica signs visitors' ids with: made once (a new one would lose every
    visitor's chats), random, never shown."""
    key = secrets.token_urlsafe(32)
    return command(
        "kubectl", "create", "secret", "generic", SESSION_SECRET, f"--from-literal=secret={key}", secrets=(key,)
    )


def oauth_client() -> tuple[str, str]:
    """The OAuth client IAP signs people in with (made once in the console: docs/deploy.md):
    ``IAP_CLIENT_ID`` and ``IAP_CLIENT_SECRET`` if set, else asked (the secret never shown)."""
    client_id = os.environ.get("IAP_CLIENT_ID") or input("OAuth client ID (…apps.googleusercontent.com): ").strip()
    return client_id, os.environ.get("IAP_CLIENT_SECRET") or getpass("OAuth client secret: ")


def create_oauth_secret(client_secret: str) -> Command:
    """IAP reads the OAuth client's secret from this Secret (key ``key``); never shown."""
    return command("kubectl", "create", "secret", "generic", OAUTH_SECRET, f"--from-literal=key={client_secret}",
                   secrets=(client_secret,))


def render_iap_policy(client_id: str) -> Path:
    """``deploy/chat-iap-policy.yaml`` with the OAuth client ID filled in, in ``deploy/rendered/``
    (git-ignored: the tracked file stays as it is)."""
    RENDERED.mkdir(exist_ok=True)
    rendered = RENDERED / IAP_POLICY
    field = f"clientID: {OAUTH_CLIENT_PLACEHOLDER}"
    rendered.write_text((DEPLOY / IAP_POLICY).read_text().replace(field, f"clientID: {client_id}"))
    return rendered


def backend_service_id(project_id: str) -> Command:
    """The id of the backend service GKE's Gateway controller made for the app's Service
    (named ``gkegw1-…-default-gradio-chat-service-7860-…``); nothing while it is being made."""
    return command("gcloud", "compute", "backend-services", "list", f"--project={project_id}",
                   f"--filter=name~-default-{APP_SERVICE}-{APP_PORT}-", "--format=value(id)")


def iap_audience(project_number: str, service_id: str) -> str:
    """The audience of IAP's assertions for a global backend service."""
    return f"/projects/{project_number}/global/backendServices/{service_id}"


def wait_for_audience(project_id: str, project_number: str, timeout: float = 900) -> str:
    """IAP's audience, once the Gateway's backend service exists (a few minutes after it is applied)."""
    import time

    started = time.monotonic()
    # Ids only: gcloud's "Listed 0 items." (its standard error) comes in the same output.
    while not (ids := [line for line in run(backend_service_id(project_id), echo=False).split("\n") if line.isdigit()]):
        if time.monotonic() - started > timeout:
            raise TimeoutError(
                f"no backend service for {APP_SERVICE} after {timeout:g} s: "
                "see `kubectl describe gateway gradio-chat-gateway`"
            )
        time.sleep(poll_seconds())
    return iap_audience(project_number, ids[0])


def set_audience(audience: str) -> list[Command]:
    """The app's ConfigMap with IAP's audience (made anew), and the app restarted to read it."""
    return [
        delete_configmap(IAP_CONFIG),
        command("kubectl", "create", "configmap", IAP_CONFIG, f"--from-literal=audience={audience}"),
        command("kubectl", "rollout", "restart", "deployment/gradio-chat"),
        command("kubectl", "rollout", "status", "deployment/gradio-chat", "--timeout=600s"),
    ]


def delete_configmap(name: str) -> Command:
    return command("kubectl", "delete", "configmap", name, "--ignore-not-found")


def wait_for_sign_in(url: str, timeout: float = 5400) -> str:
    """Wait until ``url`` answers a visitor who is not signed in with IAP's redirect to Google
    sign-in: the Gateway programmed, its certificate issued (15-60 minutes), IAP on."""
    import time

    from tqdm.auto import tqdm

    started = time.monotonic()
    with tqdm(desc="Waiting for the app's HTTPS front door", bar_format="{desc}: {elapsed} {postfix}") as bar:
        while True:
            try:
                answer = httpx.get(url, timeout=10)
                state = f"HTTP {answer.status_code}"
                if answer.is_redirect and "accounts.google.com" in answer.headers.get("location", ""):
                    bar.set_postfix_str("IAP asks for Google sign-in")
                    return url
            except httpx.ConnectError as exc:
                certificate = "SSL" in str(exc) or "certificate" in str(exc)
                state = "certificate not issued yet" if certificate else "not answering yet"
            except httpx.HTTPError as exc:
                state = type(exc).__name__
            bar.set_postfix_str(state)
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{url} does not ask for sign-in after {timeout:g} s ({state}): see "
                                   "`gcloud compute ssl-certificates describe gradio-chat-cert --global` and "
                                   "`kubectl describe gcpbackendpolicy gradio-chat-backend`")
            time.sleep(poll_seconds())


def sign_in_redirect(url: str) -> str:
    """Where ``url`` sends a visitor who is not signed in (IAP: Google's sign-in page)."""
    return str(httpx.get(url, timeout=10).headers.get("location", "nowhere: IAP is not on"))


def apply(manifest: str | Path) -> Command:
    return command("kubectl", "apply", "-f", str(DEPLOY / manifest))


def delete(manifest: str | Path) -> Command:
    return command("kubectl", "delete", "--ignore-not-found", "-f", str(DEPLOY / manifest))


def gemma_pods() -> Command:
    return command("kubectl", "get", "pods", "-l", "app=gemma-server", "-o", "json")


def gemma_events() -> Command:
    return command(
        "kubectl", "get", "events", "--field-selector", "involvedObject.kind=Pod", "--sort-by=.lastTimestamp"
    )


def port_forward_gemma(local_port: int = 8000) -> Command:
    return command("kubectl", "port-forward", "service/gemma-service", f"{local_port}:8000")


_forwards: list[Background] = []


def forward_gemma(timeout: float = 60) -> Background:
    """``kubectl port-forward`` to the in-cluster Gemma on a free local port, ready when it
    answers; its ``url`` is what this notebook's settings use (``gemma-service:8000`` is only
    reachable inside the cluster). Running the cell again replaces the earlier forward."""
    while _forwards:
        _forwards.pop().stop()
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    forward = Background(
        port_forward_gemma(port), answers, timeout=timeout,
        hint="Is the Gemma pod Ready? (notebook 02, or `kubectl get pods -l app=gemma-server`)", url=url,
    )
    _forwards.append(forward)
    return forward


def registry(project_id: str, region: str) -> str:
    """Skaffold's --default-repo: the Artifact Registry repository Terraform creates."""
    return f"{region}-docker.pkg.dev/{project_id}/chat-app-repo"


def skaffold_run(project_id: str, region: str) -> Command:
    return command("skaffold", "run", f"--default-repo={registry(project_id, region)}", cwd=ROOT)


def stage_learner_code(package: Path) -> Path:
    """Copy the learner's package where ``skaffold run``'s build context takes it into the image
    (the app in the pod runs it); the copy staged before is replaced."""
    shutil.rmtree(STAGED_LEARNER_CODE, ignore_errors=True)
    shutil.copytree(package, STAGED_LEARNER_CODE, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    return STAGED_LEARNER_CODE


def ask_deployed(message: str, model: str) -> Command:
    """One turn through the deployed app's own path (its models, its store, the learner's code),
    run inside its pod: IAP lets no script reach the page without a person's Google sign-in."""
    return command("kubectl", "exec", "deployment/gradio-chat", "--", "hybridchat", "ask", message, f"--model={model}")


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


def wait_for_gemma(timeout: float = 3600) -> None:
    """Wait until the Gemma pod is ready, showing its state, and its events while it is Pending."""
    import time

    from tqdm.auto import tqdm

    started = time.monotonic()
    last_events: float | None = None
    with tqdm(desc="Gemma pod", unit="s", bar_format="{desc}: {elapsed} {postfix}") as bar:
        while True:
            phase, detail = pod_status(run(gemma_pods(), echo=False))
            bar.set_postfix_str(f"{phase}: {detail}"[:100])
            if phase == "Ready":
                return
            if phase == "Pending" and (last_events is None or time.monotonic() - last_events > 120):
                print(run(gemma_events(), echo=False)[-2000:])
                last_events = time.monotonic()
            if time.monotonic() - started > timeout:
                raise TimeoutError(
                    f"Gemma is not ready after {timeout:g} s ({phase}: {detail}); chat with Gemini meanwhile"
                )
            time.sleep(poll_seconds())
