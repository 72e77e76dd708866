"""The workshop notebooks: executed in local mode (papermill, nbval), exercises that fail with the
right hint, checkers that can fail, and the exact gcp-mode commands."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import cloud_doubles
import fake_google
import httpx
import kube_api
import nbclient
import nbformat
import papermill
import pytest
from conftest import DOUBLES_PROJECT, EMULATOR_PROJECT, wait_for
from google.genai import types
from playwright.sync_api import expect, sync_playwright
from test_iap import turn as iap_turn
from test_infra_exercise import blocks_written

from hybridchat import learner
from hybridchat.lab import check, gcp, terraform
from hybridchat.lab.local import BackgroundServer, free_port, load_stage, stop_process
from hybridchat.lab.make_exercises import build, strip_solutions
from hybridchat.lab.shell import CommandFailed, command, run
from hybridchat.lab.workspace import learner_infra, prepare

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SOLUTIONS = sorted(NOTEBOOKS.glob("0*.ipynb"))
CELL_TIMEOUT = 300
FAKE_SECRETS = {
    "HF_TOKEN": "hf_FAKEnotebookTOKEN0123456789",
    "GOOGLE_API_KEY": "AIzaFAKE-notebook-key-0123456789",
    "HYBRIDCHAT_SESSION_SECRET": "notebook-session-secret-FAKE",
    "IAP_CLIENT_SECRET": "GOCSPX-FAKE-notebook-oauth-client-secret",
}


@pytest.fixture(scope="module")
def lab_env(tiny_model_dir, tmp_path_factory):
    """Environment of the notebook kernels: the tiny model, free ports, a scratch store and lab folder."""
    lab = tmp_path_factory.mktemp("lab")
    env = {
        "HYBRIDCHAT_LAB_DIR": str(lab),
        "HYBRIDCHAT_LOCAL_PORT": str(free_port()),
        "HYBRIDCHAT_LOCAL_MODEL": str(tiny_model_dir),
        "HYBRIDCHAT_STORE_URL": f"sqlite:///{lab}/history.db",
        **FAKE_SECRETS,  # the stand-ins accept any key: these only have to stay out of every output
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield env
    from hybridchat.lab.local import stop_local_servers

    stop_local_servers()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def execute(path: Path, output: Path, **parameters) -> nbformat.NotebookNode:
    papermill.execute_notebook(
        str(path), str(output), parameters=parameters, kernel_name="python3",
        cwd=str(path.parent), execution_timeout=CELL_TIMEOUT, progress_bar=False,
    )
    return nbformat.read(output, as_version=4)


def outputs(notebook: nbformat.NotebookNode) -> str:
    texts = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", "") or str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


def learners_answers(copy: Path) -> None:
    """Write the solutions into a workspace copy's exercise cells, as a learner would."""
    solution, notebook = nbformat.read(NOTEBOOKS / copy.name, as_version=4), nbformat.read(copy, as_version=4)
    for mine, reference in zip(notebook.cells, solution.cells, strict=True):
        if "raise NotImplementedError()" in mine.source:
            mine.source = reference.source
    nbformat.write(notebook, copy)


def notebooks_folder() -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in NOTEBOOKS.rglob("*") if path.is_file()}


@pytest.mark.slow
def test_the_notebooks_run_in_order_in_a_workspace_and_leave_the_repository_as_it_was(lab_env, tmp_path):
    before = notebooks_folder()
    workspace = tmp_path / "workspace"
    copies = [copy for copy in prepare(workspace).copied if copy.suffix == ".ipynb"]
    assert [copy.name for copy in copies] == [path.name for path in SOLUTIONS]
    stand_in = f"http://127.0.0.1:{lab_env['HYBRIDCHAT_LOCAL_PORT']}"
    blocks_written(workspace / "infra")  # notebook 01's exercise, in the files, as a learner writes it
    texts = {}
    for copy in copies:
        learners_answers(copy)
        parameters = {"MODE": "local"}
        if copy.name.startswith("05"):
            parameters["APP_PORT"] = free_port()
            seen = max(entry["id"] for entry in httpx.get(f"{stand_in}/stand-in/requests").json())
        # Saved over the copy, with its outputs, as JupyterLab's autosave does.
        texts[copy.name] = outputs(execute(copy, copy, **parameters))
        if copy.name.startswith("05"):
            launched_on_the_learners_code(workspace / "my_app", stand_in, seen)
    assert notebooks_folder() == before, "running the workspace's copies changed notebooks/"
    assert "The local stand-in is up at" in texts["02_deploy_gemma.ipynb"]
    assert texts["01_provision_infra.ipynb"].count("✅") == 5, "the files, and each of the four blocks"
    assert "✅ process_message_gemma" in texts["03_history_translators.ipynb"]
    assert "✅ process_message_gemini" in texts["03_history_translators.ipynb"]
    assert "✅ call_gemma_model answered" in texts["04_model_callers.ipynb"]
    assert "✅ call_gemini_model answered" in texts["04_model_callers.ipynb"]
    assert "saved as session" in texts["05_launch_app.ipynb"]
    assert "my_gemma: <sub>Gemma · your code</sub>" in texts["05_launch_app.ipynb"], "each reply says whose code"
    assert "with your SYSTEM_PROMPT" in texts["08_next_steps.ipynb"], "08's persona, in the learner's translators"
    assert "SYSTEM_PROMPT =" in (workspace / "my_app" / "translators.py").read_text()
    assert "gemini (" in texts["06_chat_history.ipynb"]
    assert "stopped the local stand-in" in texts["07_cleanup.ipynb"]
    assert "would run: terraform -chdir=" in texts["07_cleanup.ipynb"], "gcp steps only shown in local mode"
    assert load_stage((Path(lab_env["HYBRIDCHAT_LAB_DIR"]) / "serve-local.log").read_text()) == "starting to listen"
    assert "the phone's browser lists it:  False" in texts["08_next_steps.ipynb"]
    assert "signed in, on any device:     True" in texts["08_next_steps.ipynb"]
    saved = [copy.read_text() for copy in copies]
    logs = [path.read_text(errors="replace") for path in Path(lab_env["HYBRIDCHAT_LAB_DIR"]).glob("*.log")]
    assert len(saved) == len(SOLUTIONS) and logs, "every executed notebook and the stand-in's log are read"
    for value in FAKE_SECRETS.values():
        assert not any(value in text for text in saved + logs), f"a secret reached a notebook or log: {value[:8]}…"


def launched_on_the_learners_code(package: Path, model_server: str, seen: int) -> None:
    """What notebook 05's turns sent the models (``model_server`` keeps its requests, from
    after ``seen``) is what the learner's package makes: a raw prompt from their Gemma
    translator, not a chat request, and their Gemini translator's contents."""
    sent = httpx.get(f"{model_server}/stand-in/requests", params={"after": seen}).json()
    generated = [entry for entry in sent if "reply" in entry and entry["reply"] is not None]
    assert [entry["path"] for entry in generated] == ["/v1/completions", "gemini:generateContent"], generated
    gemma, gemini = generated
    mine = learner.load(package)
    assert gemma["prompt"] == mine.functions["process_message_gemma"]("What is the capital of France?", [])
    history = [{"role": "user", "content": "What is the capital of France?"},
               {"role": "assistant", "content": gemma["reply"].strip()}]
    contents = mine.functions["process_message_gemini"]("And of Germany?", history)
    assert gemini["contents"] == [{"role": c.role, "text": c.parts[0].text} for c in contents]


def test_the_workspace_is_copied_once_and_a_learners_copy_is_never_replaced(tmp_path):
    workspace = tmp_path / "workspace"
    first = prepare(workspace)
    package = [workspace / "my_app" / name for name in ("__init__.py", "callers.py", "translators.py")]
    infra = [workspace / "infra" / path.name for path in sorted((ROOT / "infra").glob("*.tf"))]
    assert first.copied == [workspace / path.name for path in SOLUTIONS] + package + infra and first.kept == []
    assert (workspace / "my_app" / "callers.py").read_bytes() == (NOTEBOOKS / "exercises" / "package" / "callers.py").read_bytes()
    exercise = workspace / "03_history_translators.ipynb"
    assert exercise.read_bytes() == (NOTEBOOKS / "exercises" / exercise.name).read_bytes(), "the exercise form"
    assert (workspace / "00_setup.ipynb").read_bytes() == (NOTEBOOKS / "00_setup.ipynb").read_bytes()
    exercise.write_text("the learner's work")
    (workspace / "my_app" / "translators.py").write_text("# the learner's translators")
    (workspace / "07_cleanup.ipynb").unlink()  # as for a notebook the workshop adds later
    (workspace / "my_app" / "callers.py").unlink()
    again = prepare(workspace)
    assert [copy.name for copy in again.copied] == ["07_cleanup.ipynb", "callers.py"]
    assert exercise in again.kept and exercise.read_text() == "the learner's work"
    assert (workspace / "my_app" / "translators.py").read_text() == "# the learner's translators"


def test_lab_solutions_asks_then_backs_up_the_learners_package(tmp_path):
    workspace = tmp_path / "workspace"
    prepare(workspace)
    mine = workspace / "my_app" / "translators.py"
    mine.write_text("# the learner's translators")
    lab = [sys.executable, "-m", "hybridchat.cli", "lab", "--workspace", str(workspace), "--solutions"]
    refused = subprocess.run(lab, input="n\n", capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and mine.read_text() == "# the learner's translators", "nothing without a yes"
    done = subprocess.run(lab, input="y\n", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    [backup] = workspace.glob("backup-*")
    assert (backup / "my_app" / "translators.py").read_text() == "# the learner's translators"
    assert (workspace / "infra" / "main.tf").read_text() == (ROOT / "infra" / "main.tf").read_text(), "the blocks too"
    assert "### BEGIN SOLUTION" not in mine.read_text()
    check.gemma_translator(workspace / "my_app")
    check.gemini_translator(workspace / "my_app")


def test_the_stand_ins_start_is_shown_stage_by_stage():
    log = "Local stand-in for Gemma and Gemini: http://127.0.0.1:8000 (model: m.gguf)\n"
    assert load_stage(log) == "starting Python (importing torch and transformers)"
    log += "2026-12-02 01:52:33,736 INFO hybridchat.backends.local: loading local model SmolLM2-135M-Instruct\n"
    assert load_stage(log) == "loading the model"
    log += "Loading weights:  51%|█████     | 139/272\n"
    assert load_stage(log) == "reading its weights"


@pytest.mark.slow
def test_make_lab_opens_the_workspace_in_jupyterlab_without_the_news_prompt(tmp_path):
    workspace, port, token = tmp_path / "workspace", free_port(), "workspace-test-token"
    lab = subprocess.Popen(
        [sys.executable, "-m", "hybridchat.cli", "lab", "--workspace", str(workspace), "--port", str(port),
         "--no-browser"],
        env={**os.environ, "JUPYTER_TOKEN": token}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"token {token}"}
    try:
        def listing() -> httpx.Response | None:
            try:
                return httpx.get(f"{url}/api/contents", headers=headers, timeout=5)
            except httpx.TransportError:
                assert lab.poll() is None, lab.stdout.read() if lab.stdout else ""
                return None

        listed = wait_for(listing, 60, every=0.25)
        assert listed.status_code == 200
        assert {entry["name"] for entry in listed.json()["content"]} >= {path.name for path in SOLUTIONS}
        notification = httpx.get(
            f"{url}/lab/api/settings/@jupyterlab/apputils-extension:notification", headers=headers, timeout=10
        ).json()
        defaults = {name: field.get("default") for name, field in notification["schema"]["properties"].items()}
        assert defaults["fetchNews"] == "false" and defaults["checkForUpdates"] is False  # JupyterLab's: "none", true
        # As a learner sees it: notebook 00 in Chromium, its architecture drawn by JupyterLab's Mermaid.
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = chromium.new_page()
            page.goto(f"{url}/lab/tree/00_setup.ipynb?token={token}")
            diagrams = page.locator(".jp-RenderedMermaid figure img")
            expect(diagrams).to_have_count(2, timeout=90_000)  # gcp mode, and local mode
            assert "gradio-chat-gateway" in unquote(diagrams.first.get_attribute("src") or "")
            assert page.get_by_text("official Jupyter news").count() == 0
            chromium.close()
    finally:
        stop_process(lab)
    assert "copied   03_history_translators.ipynb" in (lab.stdout.read() if lab.stdout else "")


@pytest.mark.slow
def test_nbval_runs_the_notebooks_too(lab_env, tmp_path):
    # Copies: the solutions write the learner's package beside themselves (my_app/).
    copies = [Path(shutil.copy(path, tmp_path)) for path in SOLUTIONS]
    blocks_written(learner_infra(tmp_path / "infra"))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-sanitize-with", str(NOTEBOOKS / "nbval_sanitize.cfg"),
         "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "-q", *map(str, copies)],
        cwd=tmp_path, capture_output=True, text=True, timeout=900, env={**os.environ, **lab_env},
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert re.search(r"\d+ passed", result.stdout)


@pytest.mark.parametrize(
    "name, hint",
    [
        ("03_history_translators.ipynb", "`process_message_gemma` (my_app/translators.py, line 10) is not written yet"),
        ("04_model_callers.ipynb", "`call_gemma_model` (my_app/callers.py, line 11) is not written yet"),
    ],
)
@pytest.mark.slow
def test_the_exercises_fail_at_their_checker_with_the_hint(lab_env, tmp_path, name, hint):
    exercise = Path(shutil.copy(NOTEBOOKS / "exercises" / name, tmp_path))  # it writes my_app/ beside it
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        execute(exercise, exercise, MODE="local")
    assert hint in str(failure.value)
    assert "CheckFailed" in failure.value.ename


def test_the_exercises_are_generated_from_the_solutions_and_up_to_date():
    built = build()
    exercises = NOTEBOOKS / "exercises"
    assert set(built) == {exercises / "03_history_translators.ipynb", exercises / "04_model_callers.ipynb",
                          exercises / "08_next_steps.ipynb", exercises / "package" / "translators.py",
                          exercises / "package" / "callers.py", exercises / "infra" / "main.tf"}
    for path, text in built.items():
        assert path.read_text() == text, (
            f"{path.name} is out of date: after changing a solution notebook, run `python -m "
            "hybridchat.lab.make_exercises` (it writes notebooks/exercises/ only; learners' work is in workspace/)"
        )
        stub = "# TODO: Create a GKE Autopilot cluster" if path.suffix == ".tf" else "raise NotImplementedError()"
        assert "### BEGIN SOLUTION" not in text and stub in text


def test_solution_regions_become_stubs_and_bad_markers_are_refused():
    source = "def f():\n    x = 1\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n"
    assert strip_solutions(source) == (
        "def f():\n    x = 1\n    # TODO: your code here (see the explanation above)\n    raise NotImplementedError()"
    )
    terraform = '# TODO: Create it\n### BEGIN SOLUTION\nresource "a" "b" {\n}\n### END SOLUTION\n\nlocals {}\n'
    assert strip_solutions(terraform, todo=None) == "# TODO: Create it\n\nlocals {}", "left out, its TODO kept"
    with pytest.raises(ValueError, match="never closed"):
        strip_solutions("### BEGIN SOLUTION\nx = 1")
    with pytest.raises(ValueError, match="without"):
        strip_solutions("x = 1\n### END SOLUTION")
    with pytest.raises(ValueError, match="inside another"):
        strip_solutions("### BEGIN SOLUTION\n### BEGIN SOLUTION\n")


def test_saved_notebooks_have_no_outputs_and_no_secrets():
    for path in sorted(NOTEBOOKS.rglob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (
                    f"{path.name} has outputs: the notebooks in notebooks/ are the workshop's and are saved "
                    "without outputs. Learners work in their copies (`make lab`, in workspace/); to undo a run "
                    f"here, `git checkout notebooks/{path.relative_to(NOTEBOOKS)}`"
                )
        text = path.read_text()
        assert not re.search(r"hf_[A-Za-z0-9]{20,}|AIza[0-9A-Za-z_-]{20,}|ya29\.", text), f"{path.name} holds a secret"
        parameters = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(parameters) == 1, f"{path.name} needs one cell tagged parameters"
        for name in ('MODE = "local"', "PROJECT_ID", 'REGION = "us-central1"', 'CLUSTER_NAME = "gradio-chat-cluster"'):
            assert name in parameters[0].source, f"{path.name}: {name} missing from its parameters"


# --- the checkers can fail, with a specific hint ----------------------------------------------------


def _gemma_with(role_name="model", end="<end_of_turn>\n", final="<start_of_turn>model\n"):
    def render(message, history):
        prompt = ""
        for turn in history:
            role = "user" if turn["role"] == "user" else role_name
            prompt += f"<start_of_turn>{role}\n{turn['content']}{end}"
        return prompt + f"<start_of_turn>user\n{message}{end}" + final
    return render


@pytest.mark.parametrize(
    "translator, hint",
    [
        (_gemma_with(role_name="assistant"), "Gemma calls the assistant's turns `model`"),
        (_gemma_with(final=""), "must end with `<start_of_turn>model\\n`"),
        (_gemma_with(end="\n"), "every turn must end with `<end_of_turn>`"),
        (lambda m, h: ["not a string"], "returned a list, not one string"),
        (lambda m, h: 1 / 0, "raised ZeroDivisionError"),
    ],
)
def test_the_gemma_checker_names_the_mistake(translator, hint, capsys):
    with pytest.raises(check.CheckFailed, match=re.escape(hint)):
        check.gemma_translator(translator)
    assert capsys.readouterr().out == "", "a failure shows only as the exception's hint"
    check.gemma_translator(_gemma_with())
    assert capsys.readouterr().out.startswith("✅ process_message_gemma")


@pytest.mark.slow
def test_a_failed_check_shows_its_hint_alone_and_stops_run_all():
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from hybridchat.lab import check"),
        nbformat.v4.new_code_cell("def process_message_gemma(message, history):\n    raise NotImplementedError()"),
        nbformat.v4.new_code_cell("check.gemma_translator(process_message_gemma)"),
        nbformat.v4.new_code_cell("print('went on')"),
    ])
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3")
    with pytest.raises(nbclient.exceptions.CellExecutionError):
        client.execute()
    [error] = notebook.cells[2].outputs
    assert error.output_type == "error" and error.ename == "CheckFailed"
    assert error.traceback == [
        "❌ `process_message_gemma` is not written yet: replace `raise NotImplementedError()` with your code (notebook 03)."
    ], "the hint alone: no traceback, no chained NotImplementedError"
    assert notebook.cells[3].outputs == [], "the notebook stops at the failed check"


def test_the_gemini_checker_names_the_mistake():
    def with_assistant(message, history):
        return [types.Content(role="assistant" if t["role"] == "assistant" else "user", parts=[types.Part.from_text(text=t["content"])]) for t in history] + [
            types.Content(role="user", parts=[types.Part.from_text(text=message)])]

    with pytest.raises(check.CheckFailed, match="role='model', not 'assistant'"):
        check.gemini_translator(with_assistant)
    with pytest.raises(check.CheckFailed, match="expected the roles"):
        check.gemini_translator(lambda m, h: [types.Content(role="user", parts=[types.Part.from_text(text=m)])])


def test_the_caller_checkers_catch_an_echoed_prompt_and_an_empty_reply():
    with pytest.raises(check.CheckFailed, match="still contains the prompt"):
        check.gemma_caller(lambda prompt, *_: prompt + "Paris")
    with pytest.raises(check.CheckFailed, match="`call_gemini_model` returned an empty reply"):
        check.gemini_caller(lambda *_: "")
    with pytest.raises(check.CheckFailed, match=re.escape("`call_gemma_model` returned the whole JSON answer")):
        check.gemma_caller(lambda *_: {"choices": [{"text": "Paris."}]})
    assert check.gemma_caller(lambda *_: "Paris.") == "Paris."


# --- gcp mode: the exact commands -----------------------------------------------------------------


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

GCP_PROJECT = EMULATOR_PROJECT  # the Firestore emulator's project stands in for the learner's


@pytest.fixture
def cloud(lab_env, stand_in, firestore_emulator, tmp_path, monkeypatch):
    """gcp mode on this machine: the CLIs are doubles first on PATH (their state and command log
    in the folder this yields); Gemini is the stand-in reached in Vertex AI mode with
    application-default credentials; Firestore is the emulator.

    `kubectl port-forward service/gemma-service` leads to the stand-in too, not the real vLLM:
    notebook 04 teaches a raw completion in Gemma's chat template, which only Gemma (or the
    stand-in, which re-renders it) answers; SmolLM2 on vLLM answers it with "<end_of_turn>". The
    real engine runs the app's chat path, and notebook 04's package cell, in test_vllm_engine.py.
    """
    with kube_api.fake_cluster(tmp_path) as kubeconfig, BackgroundServer(fake_google.create_app()) as hub:
        credentials = fake_google.application_default_credentials(tmp_path)
        app_env = {
            "HYBRIDCHAT_MODE": "gcp", "HYBRIDCHAT_VLLM_URL": stand_in, "HYBRIDCHAT_GEMINI_URL": stand_in,
            "GOOGLE_CLOUD_PROJECT": GCP_PROJECT, "GOOGLE_APPLICATION_CREDENTIALS": str(credentials),
            "FIRESTORE_EMULATOR_HOST": firestore_emulator.host, "HYBRIDCHAT_STORE_URL": "firestore://chat-app-db",
            "HYBRIDCHAT_LOG_LEVEL": "WARNING",
        }
        state = cloud_doubles.initial_state(GCP_PROJECT, gemma_url=stand_in, app_env=app_env)
        cloud_doubles.install(tmp_path / "bin", tmp_path / "state", state, kubeconfig)
        # The notebooks' own settings: Gemma's URL is the in-cluster one, reached by port-forward.
        for name, value in app_env.items():
            if name not in ("HYBRIDCHAT_MODE", "HYBRIDCHAT_VLLM_URL"):
                monkeypatch.setenv(name, value)
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("HF_ENDPOINT", hub)
        monkeypatch.setenv("HYBRIDCHAT_LAB_POLL_SECONDS", "0.2")
        monkeypatch.delenv("GOOGLE_API_KEY", raising=False)  # Vertex AI with credentials, as on a real project
        # The OAuth client a learner makes in the console for IAP (notebook 05 asks for it).
        monkeypatch.setenv("IAP_CLIENT_ID", "123-workshop.apps.googleusercontent.com")
        staged = gcp.STAGED_LEARNER_CODE.exists()
        try:
            yield tmp_path / "state"
        finally:
            cloud_doubles.stop_all(tmp_path / "state")
            if not staged:  # notebook 05 staged the test's package in this checkout: not left behind
                shutil.rmtree(gcp.STAGED_LEARNER_CODE, ignore_errors=True)


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
    "04_model_callers.ipynb": ["kubectl port-forward service/gemma-service PORT:8000"],
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
    "06_chat_history.ipynb": ["kubectl port-forward service/gemma-service PORT:8000"],
    "08_next_steps.ipynb": ["kubectl port-forward service/gemma-service PORT:8000"],  # before the clean-up
    "07_cleanup.ipynb": [
        "kubectl delete --ignore-not-found -f <repo>/deploy/chat-gateway.yaml",
        "kubectl delete --ignore-not-found -f <repo>/deploy/chat-iap-policy.yaml",
        "kubectl delete --ignore-not-found -f <repo>/deploy/chat-deploy.yaml",
        "kubectl delete --ignore-not-found -f <repo>/deploy/gemma3-12b-deploy.yaml",
        "kubectl delete secret hf-secret --ignore-not-found",
        "kubectl delete secret gradio-chat-session --ignore-not-found",
        "kubectl delete secret gradio-chat-oauth --ignore-not-found",
        "kubectl delete configmap gradio-chat-iap --ignore-not-found",
        "terraform -chdir=<workspace>/infra destroy -input=false -auto-approve",
        f"gcloud storage rm --recursive gs://{P}_cloudbuild --project={P}",
    ],
}


@pytest.mark.slow
def test_the_notebooks_run_in_order_in_gcp_mode(cloud, stand_in, tmp_path):
    texts, ran = {}, {}
    cloud_doubles.commands(cloud)
    workspace = tmp_path / "workspace"
    copies = [copy for copy in prepare(workspace).copied if copy.suffix == ".ipynb"]
    blocks_written(workspace / "infra")
    # 08's experiments need Gemma deployed: in gcp mode it runs before 07's clean-up.
    for copy in sorted(copies, key=lambda path: path.name.startswith("07")):
        learners_answers(copy)
        parameters = {"MODE": "gcp", "PROJECT_ID": GCP_PROJECT}
        if copy.name.startswith("07"):
            parameters["CONFIRM_DESTROY"] = True
        if copy.name.startswith("05"):
            seen = max((entry["id"] for entry in httpx.get(f"{stand_in}/stand-in/requests").json()), default=0)
        texts[copy.name] = outputs(execute(copy, copy, **parameters))
        ran[copy.name] = cloud_doubles.commands(cloud, workspace)
        if copy.name.startswith("05"):
            deployed_the_learners_code(workspace / "my_app", cloud, stand_in, seen)
        if copy.name.startswith("06"):
            across_devices = one_person_on_two_devices(cloud)
    assert ran == GCP_COMMANDS
    assert texts["01_provision_infra.ipynb"].count("✅") == 5 + 4, "each block's checker, then the project's four"
    assert "Gemma · your code: " in texts["05_launch_app.ipynb"], "the pod answered through the learner's code"
    assert texts["00_setup.ipynb"].count("✅") == 7, "every preflight check passed"
    assert "2 Insufficient nvidia.com/gpu" in texts["02_deploy_gemma.ipynb"], "the Pending pod's events are shown"
    for caller in ("call_gemma_model", "call_gemini_model"):
        assert f"✅ {caller} answered" in texts["04_model_callers.ipynb"]
    assert "not checked here" not in texts["04_model_callers.ipynb"], "what was sent was checked"
    assert "sent to Google -> https://accounts.google.com/" in texts["05_launch_app.ipynb"], "IAP is on"
    assert across_devices, "the mission's row: sign-in, and one person's history on every device"
    assert re.search(r"gemini: ['\"]", texts["06_chat_history.ipynb"]), "Gemini's reply printed (its repr)"
    # What 01-05 created, 07 deleted; the app skaffold started is stopped.
    left = json.loads((cloud / "state.json").read_text())
    assert (left["buckets"], left["secrets"], left["objects"], left["app"]) == ([], {}, {}, None)
    assert (left["configmaps"], left["gateway"]) == ({}, None)
    assert left["terraform"] == "initialized" and left["kube_context"] is None and left["cloud"] == {}
    saved = [path.read_text() for path in workspace.glob("*.ipynb")]
    assert len(saved) == len(SOLUTIONS) and not any(FAKE_SECRETS["HF_TOKEN"] in text for text in saved), (
        "the HF token reached a notebook")


def deployed_the_learners_code(package: Path, state_dir: Path, model_server: str, seen: int) -> None:
    """The image skaffold built holds the learner's package as it was, and the deployed app's
    turns sent the models what it makes: the raw prompt of their Gemma translator, the
    contents of their Gemini translator."""
    built = state_dir / "image" / "deploy" / "learner" / "my_app"
    for module in ("translators.py", "callers.py"):
        assert (built / module).read_text() == (package / module).read_text(), f"{module} is in the image as written"
    sent = httpx.get(f"{model_server}/stand-in/requests", params={"after": seen}).json()
    generated = [entry for entry in sent if entry.get("reply") is not None]
    assert [entry["path"] for entry in generated] == ["/v1/completions", "gemini:generateContent"], sent
    mine = learner.load(package)
    assert generated[0]["prompt"] == mine.functions["process_message_gemma"]("What is the capital of France?", [])
    contents = mine.functions["process_message_gemini"]("What is the capital of France?", [])
    assert generated[1]["contents"] == [{"role": c.role, "text": c.parts[0].text} for c in contents]


def one_person_on_two_devices(state_dir: Path) -> bool:
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
    return True


@pytest.mark.slow
def test_notebook_00_in_gcp_mode_creates_nothing_when_the_preflight_fails(doubles, tmp_path, monkeypatch):
    doubles(billing=False)
    monkeypatch.setenv("HF_TOKEN", fake_google.GRANTED_TOKEN)
    with pytest.raises(papermill.PapermillExecutionError, match="PreflightFailed"):
        execute(NOTEBOOKS / "00_setup.ipynb", tmp_path / "00.ipynb", MODE="gcp", PROJECT_ID=DOUBLES_PROJECT)
    ran = cloud_doubles.commands(tmp_path / "state")
    assert ran and not any(" enable " in line or " create " in line for line in ran), ran


@pytest.mark.slow
def test_the_in_cluster_gemma_url_fails_notebook_04_in_gcp_mode(cloud, tmp_path):
    """Reintroduce the old bug (settings keep `http://gemma-service:8000`, reachable only inside
    the cluster): the gcp-mode run fails, and the port-forward it started is stopped."""
    state = json.loads((cloud / "state.json").read_text())
    state.update(kube_context="gke_workshop", pod_polls=9, objects={"service/gemma-service": "gemma3-12b-deploy.yaml"})
    (cloud / "state.json").write_text(json.dumps(state))
    notebook = nbformat.read(NOTEBOOKS / "04_model_callers.ipynb", as_version=4)
    fix = '    settings = settings.model_copy(update={"vllm_url": forward.url})\n'
    cell = next(c for c in notebook.cells if fix in c.source)
    cell.source = cell.source.replace(fix, "")
    mutated = tmp_path / "04_in_cluster_url.ipynb"
    nbformat.write(notebook, mutated)
    with pytest.raises(papermill.PapermillExecutionError, match="gemma-service"):
        execute(mutated, tmp_path / "out.ipynb", MODE="gcp", PROJECT_ID=GCP_PROJECT)
    assert cloud_doubles.commands(cloud) == ["kubectl port-forward service/gemma-service PORT:8000"]
    shown = outputs(nbformat.read(tmp_path / "out.ipynb", as_version=4))
    assert "A cell failed: `kubectl port-forward service/gemma-service" in shown, "the failed cell stopped it"
