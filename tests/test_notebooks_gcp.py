"""The notebooks in gcp mode: the exact commands they run, and every notebook in order against the
cloud CLIs' doubles, the Firestore emulator and the stand-in."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cloud_doubles
import fake_google
import httpx
import nbformat
import papermill
import pytest
from conftest import DOUBLES_PROJECT, GCP_PROJECT
from notebook_runs import FAKE_SECRETS, NOTEBOOKS, SOLUTIONS, execute, learners_answers, outputs
from test_iap import turn as iap_turn
from test_infra_exercise import blocks_written
from test_learner import last_id

from hybridchat import learner
from hybridchat.lab import gcp, terraform
from hybridchat.lab.shell import CommandFailed, command, run
from hybridchat.lab.workspace import prepare

ROOT = Path(__file__).resolve().parents[1]


def test_gcp_commands_are_the_workshops():
    assert str(gcp.project_number("my-proj")) == "gcloud projects describe my-proj '--format=value(projectNumber)'"
    assert str(gcp.create_build_bucket("my-proj", "us-central1")) == (
        "gcloud storage buckets create gs://my-proj_cloudbuild --project=my-proj --location=us-central1")
    assert str(gcp.get_credentials("gradio-chat-cluster", "us-central1", "my-proj")) == (
        "gcloud container clusters get-credentials gradio-chat-cluster --region=us-central1 --project=my-proj")
    assert str(gcp.skaffold_run("my-proj", "us-central1")) == (
        "skaffold run --default-repo=us-central1-docker.pkg.dev/my-proj/chat-app-repo")
    assert gcp.skaffold_run("p", "r").cwd == ROOT
    assert gcp.apply("gemma3-12b-deploy.yaml").argv == ("kubectl", "apply", "-f", str(ROOT / "deploy" / "gemma3-12b-deploy.yaml"))
    assert str(terraform.plan()) == f"terraform -chdir={ROOT / 'infra'} plan -input=false -out=tfplan"
    assert str(terraform.apply()) == f"terraform -chdir={ROOT / 'infra'} apply -input=false tfplan"


def test_the_hugging_face_token_never_shows(capsys):
    secret = command("kubectl", "create", "secret", "generic", "hf-secret", "--from-literal=hf_api_token=hf_SECRET123")
    assert "hf_SECRET123" in str(secret)  # a plain command shows everything
    masked = gcp.create_hf_secret("hf_SECRET123")
    assert "hf_SECRET123" not in str(masked) and "hf_api_token=****" in str(masked)
    echo = command("sh", "-c", "echo token is hf_SECRET123", secrets=("hf_SECRET123",))
    assert run(echo).strip().endswith("token is ****")
    assert "hf_SECRET123" not in capsys.readouterr().out


def test_commands_that_work_offline_run_for_real(tmp_path):
    assert "Google Cloud SDK" in run(command("gcloud", "--version"), echo=False)
    run(terraform.fmt_check())
    path = terraform.write_tfvars("my-proj", "123456789012", "us-central1", "gradio-chat-cluster", infra=tmp_path)
    assert 'project_number = "123456789012"' in path.read_text()
    with pytest.raises(CommandFailed, match="exit 3"):
        run(command("terraform", "fmt", "-check", str(_unformatted(tmp_path))), echo=False)
    counted = run(command("printf", "a\\nb\\nc\\n"), echo=False, progress="lines")
    assert counted.splitlines() == ["a", "b", "c"]
    with pytest.raises(CommandFailed, match=r"ran past 0\.5 s"):
        run(command("sleep", "5"), timeout=0.5, echo=False)


def _unformatted(directory: Path) -> Path:
    (directory / "bad.tf").write_text('variable "x" {\ndefault="y"\n}\n')
    return directory


def test_pod_status_reads_kubectl_output():
    pending = {"items": [{"status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "message": "0/3 nodes are available: node affinity/selector"}]}}]}
    assert gcp.pod_status(json.dumps(pending)) == ("Pending", "waiting for a GPU node: 0/3 nodes are available: node affinity/selector")
    ready = {"items": [{"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}]}
    assert gcp.pod_status(json.dumps(ready))[0] == "Ready"
    assert gcp.pod_status('{"items": []}')[0] == "Missing"


# --- gcp mode: every notebook against the cloud CLIs' doubles ---------------------------------------

P = GCP_PROJECT
WAIT_FOR_GEMMA = ["kubectl get pods -l app=gemma-server -o json"]  # once per poll
BACKEND_SERVICE = [f"gcloud compute backend-services list --project={P} '--filter=name~-default-gradio-chat-service-7860-' "
                   "'--format=value(id)'"]
# The workshop's script: every cloud command the notebooks run in gcp mode, in order.
GCP_COMMANDS = {
    "00_setup.ipynb": [
        # which tools are here
        "gcloud --version", "terraform version", "kubectl version --client", "gke-gcloud-auth-plugin --version",
        "skaffold --version",
        # the preflight: read-only
        "gcloud auth list --filter=status:ACTIVE '--format=value(account)'",
        "gcloud auth application-default print-access-token",
        f"gcloud projects describe {P} '--format=value(projectNumber)'",
        f"gcloud billing projects describe {P} '--format=value(billingEnabled)'",
        f"gcloud services list --enabled --project={P} '--format=value(config.name)'",
        f"gcloud compute regions describe us-central1 --project={P} --format=json",
        f"gcloud compute project-info describe --project={P} --format=json",
        # then the first things made
        "gcloud config get-value project",
        f"gcloud services enable cloudresourcemanager.googleapis.com storage.googleapis.com --project={P}",
        f"gcloud storage buckets create gs://{P}_cloudbuild --project={P} --location=us-central1",
    ],
    "01_provision_infra.ipynb": [  # in the learner's infra/, as they wrote it
        "terraform fmt -no-color -check -recursive <workspace>/infra",
        f"gcloud projects describe {P} '--format=value(projectNumber)'",
        "gcloud auth list --filter=status:ACTIVE '--format=value(account)'",  # who may sign in: you
        "terraform -chdir=<workspace>/infra init -input=false",
        "terraform -chdir=<workspace>/infra plan -input=false -out=tfplan",
        "terraform -chdir=<workspace>/infra apply -input=false tfplan",
        f"gcloud container clusters get-credentials gradio-chat-cluster --region=us-central1 --project={P}",
        # check my progress, in the cloud
        f"gcloud container clusters describe gradio-chat-cluster --region=us-central1 --project={P} --format=json",
        f"gcloud firestore databases describe --database=chat-app-db --project={P} --format=json",
        f"gcloud projects get-iam-policy {P} --format=json",
    ],
    "02_deploy_gemma.ipynb": [
        "kubectl create secret generic hf-secret '--from-literal=hf_api_token=****'",
        "kubectl apply -f <repo>/deploy/gemma3-12b-deploy.yaml",
        # Pending (its events shown once), Pending, Running not yet Ready, Ready
        *WAIT_FOR_GEMMA, "kubectl get events --field-selector involvedObject.kind=Pod --sort-by=.lastTimestamp",
        *WAIT_FOR_GEMMA * 3,
    ],
    "03_history_translators.ipynb": [],
    "04_model_callers.ipynb": [*WAIT_FOR_GEMMA, "kubectl port-forward service/gemma-service PORT:8000"],
    "05_launch_app.ipynb": [
        "kubectl get secret gradio-chat-session --ignore-not-found -o name",
        "kubectl create secret generic gradio-chat-session '--from-literal=secret=****'",
        "kubectl get secret gradio-chat-oauth --ignore-not-found -o name",
        "kubectl create secret generic gradio-chat-oauth '--from-literal=key=****'",
        "kubectl apply -f <repo>/deploy/rendered/chat-iap-policy.yaml",
        f"skaffold run --default-repo=us-central1-docker.pkg.dev/{P}/chat-app-repo",
        f"gcloud projects describe {P} '--format=value(projectNumber)'",
        *BACKEND_SERVICE * 2,  # not made yet, then its id
        "kubectl delete configmap gradio-chat-iap --ignore-not-found",
        "kubectl create configmap gradio-chat-iap '--from-literal=audience=****'",  # the log masks literals; the audience works (one_person_on_two_devices)
        "kubectl rollout restart deployment/gradio-chat",
        "kubectl rollout status deployment/gradio-chat --timeout=600s",
        "terraform -chdir=<workspace>/infra output -raw app_url",
        # one turn on each of the learner's paths, inside the app's pod
        "kubectl exec deployment/gradio-chat -- hybridchat ask 'What is the capital of France?' --model=my_gemma",
        "kubectl exec deployment/gradio-chat -- hybridchat ask 'What is the capital of France?' --model=my_gemini",
    ],
    "06_chat_history.ipynb": [*WAIT_FOR_GEMMA, "kubectl port-forward service/gemma-service PORT:8000"],
    "08_next_steps.ipynb": [*WAIT_FOR_GEMMA, "kubectl port-forward service/gemma-service PORT:8000"],  # before 07
    "07_cleanup.ipynb": [
        "kubectl delete --ignore-not-found -f <repo>/deploy/chat-gateway.yaml",
        "kubectl delete --ignore-not-found -f <repo>/deploy/chat-iap-policy.yaml",
        "kubectl delete --ignore-not-found -f <repo>/deploy/chat-deploy.yaml",
        "kubectl delete --ignore-not-found -f <repo>/deploy/gemma3-12b-deploy.yaml",
        "kubectl delete secret hf-secret --ignore-not-found",
        "kubectl delete secret gradio-chat-session --ignore-not-found",
        "kubectl delete secret gradio-chat-oauth --ignore-not-found",
        "kubectl delete secret gemma-room-key --ignore-not-found",
        "kubectl delete configmap gradio-chat-iap --ignore-not-found",
        "kubectl delete configmap gemma-room --ignore-not-found",
        "terraform -chdir=<workspace>/infra destroy -input=false -auto-approve",
        f"gcloud storage rm --recursive gs://{P}_cloudbuild --project={P}",
        # then what is left that bills, listed
        f"gcloud container clusters list --project={P} --format=json",
        f"gcloud compute instances list --project={P} --format=json",
        f"gcloud compute disks list --project={P} --format=json",
        f"gcloud compute forwarding-rules list --project={P} --format=json",
        f"gcloud compute addresses list --project={P} --format=json",
        f"gcloud compute ssl-certificates list --project={P} --format=json",
        f"gcloud storage buckets list --project={P} --format=json",
        f"gcloud firestore databases list --project={P} --format=json",
        f"gcloud artifacts repositories list --project={P} --location=us-central1 --format=json",
    ],
}


def run_the_workshop(cloud: Path, workspace: Path, gemma: str, gemini: str, **parameters) -> tuple[dict, dict]:
    """Every notebook in gcp mode, in a learner's order, with ``parameters``: what each printed
    and each ran. ``gemma`` and ``gemini`` are the servers that keep what each model was sent."""
    texts, ran = {}, {}
    cloud_doubles.commands(cloud)
    copies = [copy for copy in prepare(workspace).copied if copy.suffix == ".ipynb"]
    blocks_written(workspace / "infra")
    # 08's experiments need Gemma deployed: in gcp mode it runs before 07's clean-up.
    for copy in sorted(copies, key=lambda path: path.name.startswith("07")):
        learners_answers(copy)
        given = {"MODE": "gcp", "PROJECT_ID": GCP_PROJECT, **parameters}
        if copy.name.startswith("07"):
            given["CONFIRM_DESTROY"] = True
        if copy.name.startswith("08"):
            given["PICK_FOR_ME"] = "longer"
        if copy.name.startswith("05"):
            seen = {server: last_id(server) for server in (gemma, gemini)}
        texts[copy.name] = outputs(execute(copy, copy, **given))
        ran[copy.name] = cloud_doubles.commands(cloud, workspace)
        if copy.name.startswith("05"):
            deployed_the_learners_code(workspace / "my_app", cloud, gemma, gemini, seen)
        if copy.name.startswith("06"):
            one_person_on_two_devices(cloud)  # the mission's row: sign-in, one person's history on every device
    left = json.loads((cloud / "state.json").read_text())  # what 01-05 created, 07 deleted
    assert (left["buckets"], left["secrets"], left["objects"], left["app"]) == ([], {}, {}, None)
    assert (left["configmaps"], left["gateway"]) == ({}, None)
    assert left["terraform"] == "initialized" and left["kube_context"] is None and left["cloud"] == {}
    return texts, ran


@pytest.mark.slow
def test_the_notebooks_run_in_order_in_gcp_mode(cloud, stand_in, tmp_path):
    workspace = tmp_path / "workspace"
    texts, ran = run_the_workshop(cloud, workspace, stand_in, stand_in)
    assert ran == GCP_COMMANDS
    assert texts["01_provision_infra.ipynb"].count("✅") == 5 + 4, "each block's checker, then the project's four"
    assert "Gemma · your code: " in texts["05_launch_app.ipynb"], "the pod answered through the learner's code"
    assert texts["00_setup.ipynb"].count("✅") == 7, "every preflight check passed"
    assert "2 Insufficient nvidia.com/gpu" in texts["02_deploy_gemma.ipynb"], "the Pending pod's events are shown"
    for caller in ("call_gemma_model", "call_gemini_model"):
        assert f"✅ {caller} answered" in texts["04_model_callers.ipynb"]
    assert "not checked here" not in texts["04_model_callers.ipynb"], "what was sent was checked"
    assert "sent to Google -> https://accounts.google.com/" in texts["05_launch_app.ipynb"], "IAP is on"
    assert re.search(r"gemini: ['\"]", texts["06_chat_history.ipynb"]), "Gemini's reply printed (its repr)"
    assert "picks: 1, won by the left reply: 1" in texts["06_chat_history.ipynb"]
    assert re.search(r"gemma was picked in \d+ of 10 \(", texts["08_next_steps.ipynb"]), "the blind test, through Gemma"
    assert f"Nothing of the workshop's kinds bills in {P} (us-central1)." in texts["07_cleanup.ipynb"]
    verdicts = {v["exercise"]: v["status"] for v in json.loads((workspace / "progress.json").read_text())}
    assert {exercise: verdicts.get(exercise) for exercise in ("01 plan", "01 in the cloud", "05 turn", "07 leftovers")
            } == dict.fromkeys(("01 plan", "01 in the cloud", "05 turn", "07 leftovers"), "ok"), (
        "gcp mode's own checks keep their verdicts too")
    saved = [path.read_text() for path in workspace.glob("*.ipynb")]
    assert len(saved) == len(SOLUTIONS) and not any(FAKE_SECRETS["HF_TOKEN"] in text for text in saved), (
        "the HF token reached a notebook")


def deployed_the_learners_code(package: Path, state_dir: Path, gemma: str, gemini: str, seen: dict[str, int]) -> None:
    """The image skaffold built holds the learner's package as it was, and the deployed app's
    turns sent the models what it makes: the raw prompt of their Gemma translator, the
    contents of their Gemini translator."""
    built = state_dir / "image" / "deploy" / "learner" / "my_app"
    for module in ("translators.py", "callers.py"):
        assert (built / module).read_text() == (package / module).read_text(), f"{module} is in the image as written"
    generated = {server: [entry for entry in httpx.get(f"{server}/stand-in/requests", params={"after": seen[server]}).json()
                          if entry.get("reply") is not None] for server in {gemma, gemini}}
    to_gemma = [entry for entry in generated[gemma] if entry["path"] == "/v1/completions"]
    to_gemini = [entry for entry in generated[gemini] if entry["path"] == "gemini:generateContent"]
    assert len(to_gemma) == len(to_gemini) == 1 and sum(map(len, generated.values())) == 2, generated
    [to_gemma], [to_gemini] = to_gemma, to_gemini
    mine = learner.load(package)
    assert to_gemma["prompt"] == mine.functions["process_message_gemma"]("What is the capital of France?", [])
    contents = mine.functions["process_message_gemini"]("What is the capital of France?", [])
    assert to_gemini["contents"] == [{"role": c.role, "text": c.parts[0].text} for c in contents]


def one_person_on_two_devices(state_dir: Path) -> None:
    """What 05 deployed, as people meet it: through the Gateway with IAP, the learner (the
    member notebook 01 let in) on a laptop and on a phone, and someone who is not a member.
    Both of the learner's devices show the chat started on one; the stranger gets IAP's 403."""
    state = json.loads((state_dir / "state.json").read_text())
    gateway = f"http://127.0.0.1:{state['gateway_port']}"
    assert httpx.get(gateway).status_code == 302, "not signed in: sent to Google"

    def device(email: str) -> dict[str, str]:
        return dict(httpx.get(f"{gateway}/_iap_double/sign_in", params={"user": email}).cookies)

    assert httpx.get(gateway, cookies=device("stranger@example.com")).status_code == 403
    laptop, phone = device(state["account"]), device(state["account"])
    started = iap_turn(gateway, "Hello from my laptop", {"visitor": None, "session": None}, cookies=laptop)
    assert started.ok and started.last_reply, started
    page = iap_turn(gateway, "", {}, cookies=phone, api_name="start", data=[{"visitor": None, "session": None}, None])
    assert started.browser["session"] in [choice[1] for choice in page.outputs[3]["choices"]], "the phone lists it"
    assert f"Signed in as **{state['account']}**" in page.outputs[6]["value"]
    app = f"http://127.0.0.1:{state['app']['port']}"
    forged = {"x-goog-authenticated-user-email": f"accounts.google.com:{state['account']}"}
    assert httpx.get(app, headers=forged).status_code == 403, "the pod itself believes only IAP's signature"


@pytest.mark.slow
def test_notebook_00_in_gcp_mode_creates_nothing_when_the_preflight_fails(doubles, tmp_path, monkeypatch):
    doubles(billing=False)
    monkeypatch.setenv("HF_TOKEN", fake_google.GRANTED_TOKEN)
    with pytest.raises(papermill.PapermillExecutionError, match="PreflightFailed"):
        setup = Path(shutil.copy(NOTEBOOKS / "00_setup.ipynb", tmp_path))  # it saves workshop.json beside it
        execute(setup, setup, MODE="gcp", PROJECT_ID=DOUBLES_PROJECT)
    ran = cloud_doubles.commands(tmp_path / "state")
    assert ran and not any(" enable " in line or " create " in line for line in ran), ran


@pytest.mark.slow
def test_the_in_cluster_gemma_url_fails_notebook_04_in_gcp_mode(cloud, tmp_path):
    """Reintroduce the old bug (settings keep `http://gemma-service:8000`, reachable only inside
    the cluster): the gcp-mode run fails, and the port-forward it started is stopped."""
    state = json.loads((cloud / "state.json").read_text())
    state.update(kube_context="gke_workshop", pod_polls=9, objects={  # Gemma deployed, and Ready
        "deployment.apps/vllm-gemma-deployment": "gemma3-12b-deploy.yaml", "service/gemma-service": "gemma3-12b-deploy.yaml"})
    (cloud / "state.json").write_text(json.dumps(state))
    notebook = nbformat.read(NOTEBOOKS / "04_model_callers.ipynb", as_version=4)
    fix = "settings = reached.settings\n"
    cell = next(c for c in notebook.cells if fix in c.source)
    cell.source = cell.source.replace(fix, "")
    mutated = tmp_path / "04_in_cluster_url.ipynb"
    nbformat.write(notebook, mutated)
    with pytest.raises(papermill.PapermillExecutionError, match="gemma-service"):
        execute(mutated, tmp_path / "out.ipynb", MODE="gcp", PROJECT_ID=GCP_PROJECT)
    assert cloud_doubles.commands(cloud) == [*WAIT_FOR_GEMMA, "kubectl port-forward service/gemma-service PORT:8000"]
    shown = outputs(nbformat.read(tmp_path / "out.ipynb", as_version=4))
    assert "A cell failed: `kubectl port-forward service/gemma-service" in shown, "the failed cell stopped it"
