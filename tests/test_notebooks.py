"""The workshop notebooks in local mode: executed in order in a learner's workspace (papermill,
nbval), the workspace and `make lab` around them, and the notebooks as saved."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import httpx
import nbformat
import pytest
from conftest import wait_for
from notebook_runs import FAKE_SECRETS, NOTEBOOKS, SOLUTIONS, execute, learners_answers, outputs
from playwright.sync_api import expect, sync_playwright
from test_infra_exercise import blocks_written
from test_learner import last_id
from test_room_progress import KEY as ROOM_KEY
from test_room_progress import board_of, running_room
from websockets.sync.client import connect

from hybridchat import comparison, learner
from hybridchat.lab import check, local, workshop
from hybridchat.lab.local import free_port, load_stage, stop_process
from hybridchat.lab.make_exercises import solutions
from hybridchat.lab.workspace import learner_infra, prepare
from hybridchat.store import open_store

ROOT = Path(__file__).resolve().parents[1]


def notebooks_folder() -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in NOTEBOOKS.rglob("*") if path.is_file()}


@pytest.fixture
def room(tmp_path, monkeypatch):
    """A room's progress service, and its key for the notebooks' kernels: each checker's verdict is sent there."""
    monkeypatch.setenv("HYBRIDCHAT_VLLM_API_KEY", ROOM_KEY)
    with running_room(tmp_path) as url:
        yield url


@pytest.mark.slow
def test_the_notebooks_run_in_order_in_a_workspace_and_leave_the_repository_as_it_was(lab_env, tmp_path, room):
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
        if copy.name.startswith("00"):
            parameters |= {"ATTENDEE": "Ann", "ROOM_URL": room}
        if copy.name.startswith("08"):
            parameters["PICK_FOR_ME"] = "shorter"  # the blind test's buttons, clicked by the notebook
        if copy.name.startswith("05"):
            parameters["APP_PORT"] = free_port()
            seen = last_id(stand_in)
        # Saved over the copy, with its outputs, as JupyterLab's autosave does.
        texts[copy.name] = outputs(execute(copy, copy, **parameters))
        if copy.name.startswith("05"):
            launched_on_the_learners_code(workspace / "my_app", stand_in, seen)
    assert notebooks_folder() == before, "running the workspace's copies changed notebooks/"
    verdicts = board_of(room)
    assert verdicts == {("Ann", exercise): "✅" for exercise in (
        "01 cluster", "01 database", "01 document", "01 identity", "01 files", "03 Gemma", "03 Gemini",
        "04 Gemma", "04 Gemini", "05 turn")}, "each checker cell's verdict reached the room's page"
    kept = json.loads((workspace / "progress.json").read_text())
    assert {v["exercise"] for v in kept} == {e for _, e in verdicts} and all(v["sent"] for v in kept)
    assert "The local stand-in is up at" in texts["02_deploy_gemma.ipynb"]
    assert texts["01_provision_infra.ipynb"].count("✅") == 5, "the files, and each of the four blocks"
    assert "✅ process_message_gemma" in texts["03_history_translators.ipynb"]
    assert "✅ process_message_gemini" in texts["03_history_translators.ipynb"]
    assert "✅ call_gemma_model answered" in texts["04_model_callers.ipynb"]
    assert "✅ call_gemini_model answered" in texts["04_model_callers.ipynb"]
    assert "saved as session" in texts["05_launch_app.ipynb"]
    assert "**my_gemma**: <sub>Gemma · your code</sub>" in texts["05_launch_app.ipynb"], "shown as the chat shows it"
    app_log = Path(lab_env["HYBRIDCHAT_LAB_DIR"]) / "app.log"
    assert f"Its log (a line per turn, and the traceback of a mistake in your code): {app_log}" in texts[
        "05_launch_app.ipynb"]
    assert '"event": "turn"' in app_log.read_text(), "05's turns, in the log its launch cell names"
    assert "with your SYSTEM_PROMPT" in texts["08_next_steps.ipynb"], "08's persona, in the learner's translators"
    assert "Answers:" in texts["08_next_steps.ipynb"] and "Asking both models:" in texts["08_next_steps.ipynb"], (
        "08's long cells show their progress")
    assert "SYSTEM_PROMPT =" in (workspace / "my_app" / "translators.py").read_text()
    assert "gemini (" in texts["06_chat_history.ipynb"]
    assert "stopped the local stand-in" in texts["07_cleanup.ipynb"]
    assert "stopped the local stand-in this notebook started" in texts["08_next_steps.ipynb"], "08 ran after 07"
    assert not local.serving(stand_in), "08 leaves the stand-in stopped, as 07 left it"
    assert "would run: terraform -chdir=" in texts["07_cleanup.ipynb"], "gcp steps only shown in local mode"
    assert "would run: gcloud container clusters list --project=PROJECT_ID" in texts["07_cleanup.ipynb"], "its check too"
    assert load_stage((Path(lab_env["HYBRIDCHAT_LAB_DIR"]) / "serve-local.log").read_text()) == "starting to listen"
    assert "the phone's browser lists it:  False" in texts["08_next_steps.ipynb"]
    assert "signed in, on any device:     True" in texts["08_next_steps.ipynb"]
    assert "picks: 1, won by the left reply: 1" in texts["06_chat_history.ipynb"], "06's pick, through the app's"
    assert re.search(r"gemma was picked in \d+ of 10 \(", texts["08_next_steps.ipynb"]), "08's verdict"
    store = open_store(lab_env["HYBRIDCHAT_STORE_URL"])
    turns = comparison.read_turns(store)
    picks = comparison.duels(turns)
    learners = turns[turns.model.str.startswith("my_") & turns.status.isin(comparison.WHOLE)]
    assert set(learners.model) == {"my_gemma", "my_gemini"} and learners.completion_tokens.notna().all(), (
        "06's token plots have the learner's paths too (counted with the model's tokenizer)")
    assert len(picks) == 11 and set(picks.winner) | set(picks.loser) == {"gemma", "gemini"}, "saved, as the app saves"
    store.close()
    saved = [copy.read_text() for copy in copies]
    logs = [path.read_text(errors="replace") for path in Path(lab_env["HYBRIDCHAT_LAB_DIR"]).glob("*.log")]
    assert len(saved) == len(SOLUTIONS) and logs, "every executed notebook and the stand-in's log are read"
    for value in (*FAKE_SECRETS.values(), ROOM_KEY):
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


def test_lab_reset_puts_one_notebook_back_and_keeps_the_learners_copy(tmp_path):
    workspace = tmp_path / "workspace"
    prepare(workspace)
    mine = workspace / "05_launch_app.ipynb"
    mine.write_text("the learner's broken notebook")
    lab = [sys.executable, "-m", "hybridchat.cli", "lab", "--workspace", str(workspace), "--reset"]
    done = subprocess.run([*lab, "05"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "05: put back as the workshop gives it; yours is in" in done.stdout, done.stderr
    assert mine.read_bytes() == (NOTEBOOKS / mine.name).read_bytes()
    [backup] = workspace.glob("backup-*")
    assert (backup / mine.name).read_text() == "the learner's broken notebook"
    exercise = workspace / "03_history_translators.ipynb"
    exercise.unlink()  # deleted by mistake: put back, nothing to keep
    assert subprocess.run([*lab, exercise.name], capture_output=True, timeout=120).returncode == 0
    assert exercise.read_bytes() == (NOTEBOOKS / "exercises" / exercise.name).read_bytes(), "the exercise form"
    unknown = subprocess.run([*lab, "42"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "no notebook '42': one of 00_setup.ipynb" in unknown.stderr
    (workspace / "08_next_steps.ipynb").write_text("the learner's")
    as_a_number = subprocess.run([*lab, "8"], capture_output=True, text=True, timeout=120)
    assert as_a_number.returncode == 0 and "8: put back" in as_a_number.stdout, "8 is 08"
    assert "File > Reload Notebook from Disk" in as_a_number.stdout, "else saving the open tab undoes the reset"
    assert "[default: 0]" not in subprocess.run([*lab[:4], "--help"], capture_output=True, text=True,
                                                 env={**os.environ, "COLUMNS": "200"}, timeout=120).stdout


def test_the_package_installs_without_setuptools_deprecations():
    """`make lab` installs the package: its metadata as setuptools reads it, warnings as errors."""
    read = ("from setuptools.config.pyprojecttoml import apply_configuration; from setuptools.dist import "
            "Distribution; print(apply_configuration(Distribution(), 'pyproject.toml').metadata.license_expression)")
    done = subprocess.run([sys.executable, "-W", "error", "-c", read], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "Apache-2.0", done.stderr[-2000:]


def test_the_solutions_are_in_the_workspace_read_only_and_current(tmp_path):
    workspace = tmp_path / "workspace"
    prepare(workspace)
    reference = workspace / "solutions"
    names = sorted(path.relative_to(reference).as_posix() for path in reference.rglob("*") if path.is_file())
    assert names == sorted([*(path.name for path in SOLUTIONS), "infra/main.tf", "infra/outputs.tf",
                            "infra/variables.tf", "infra/versions.tf", "my_app/callers.py", "my_app/translators.py",
                            "README.md"])
    assert "Open one when a checker's hint has not got you further" in (reference / "README.md").read_text()
    assert (reference / "03_history_translators.ipynb").read_bytes() == (SOLUTIONS[3]).read_bytes()
    assert "### BEGIN SOLUTION" not in (reference / "my_app" / "translators.py").read_text()
    for path in [reference, *reference.rglob("*")]:
        assert path.stat().st_mode & 0o222 == 0, f"{path} can be written"
    prepare(workspace)  # made anew over the read-only one: what the workshop has now
    assert (reference / "my_app" / "callers.py").read_text() == solutions()["callers.py"]


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


def working_directory(terminal: str) -> str:
    """What a JupyterLab terminal's shell says its working directory is."""
    with connect(terminal, open_timeout=10) as shell:
        shell.send('["stdin", "echo CWD=$PWD\\r"]')
        said = ""
        while not (found := re.search(r"CWD=(/\S+)", said)):
            kind, *text = json.loads(shell.recv(timeout=20))
            said += "".join(text) if kind == "stdout" else ""
    return found[1]


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
        # A terminal, as JupyterLab's launcher opens one (at the file browser's top, ""), or with no cwd:
        # in the workspace, where `terraform fmt infra` mends the learner's files, not the repository's.
        for asked in ({"cwd": ""}, {}):
            terminal = httpx.post(f"{url}/api/terminals", headers=headers, json=asked, timeout=10).json()["name"]
            assert working_directory(f"ws://127.0.0.1:{port}/terminals/websocket/{terminal}?token={token}") == str(
                workspace.resolve()), asked
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
def test_in_cloud_shell_make_lab_answers_through_web_preview(tmp_path):
    """Cloud Shell's Web Preview proxies to 127.0.0.1 with its own host name: the real JupyterLab
    refuses that (403) unless served for it, as `hybridchat lab` does where CLOUD_SHELL=true."""
    proxied = {"Host": "8080-cs-1234-default.cs-europe-west1-abcd.cloudshell.dev", "Authorization": "token t0ken"}
    statuses, said = {}, {}
    for cloud_shell in ("true", ""):
        port = free_port()
        lab = subprocess.Popen(
            [sys.executable, "-m", "hybridchat.cli", "lab", "--workspace", str(tmp_path / "workspace"), "--port", str(port)],
            env={**os.environ, "CLOUD_SHELL": cloud_shell, "JUPYTER_TOKEN": "t0ken", "BROWSER": "false"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            def answered() -> int | None:
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/api/contents", headers=proxied, timeout=5).status_code
                except httpx.TransportError:
                    assert lab.poll() is None, lab.stdout.read() if lab.stdout else ""
                    return None

            statuses[cloud_shell] = wait_for(answered, 60, every=0.25)
        finally:
            stop_process(lab)
        said[cloud_shell] = lab.stdout.read() if lab.stdout else ""
    assert statuses == {"true": 200, "": 403}
    assert f"Cloud Shell: open Web Preview (the eye icon above the terminal), 'Change port' to {port}" not in said[""]
    assert "Cloud Shell: open Web Preview (the eye icon above the terminal), 'Change port' to" in said["true"]


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
        assert "**Needs**: " in notebook.cells[0].source, f"{path.name}: say what it needs, for a learner joining late"
        parameters = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(parameters) == 1, f"{path.name} needs one cell tagged parameters"
        code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code" and c is not parameters[0])
        for name, default in workshop.DEFAULTS.items():
            if name in ("GEMMA_URL", "GEMMA", "ATTENDEE", "ROOM_URL") and not re.search(rf"\b{name}\b", code):
                continue  # only where Gemma is reached or deployed (the checkers read the room's from workshop.json)
            # 00 sets the workshop's parameters (and saves them); the others read what it saved.
            line = f"{name} = {default!r}" if path.name.startswith("00") else f'{name} = saved("{name}")'
            assert line.replace("'", '"') in parameters[0].source, f"{path.name}: {name} missing from its parameters"



def test_notebook_00_names_every_exercise():
    """01's Terraform is an exercise too (notebooks/exercises/infra), beside the notebooks with solutions."""
    exercises = sorted({path.name[:2] for path in (NOTEBOOKS / "exercises").glob("0*.ipynb")} | {"01"})
    source = "\n".join(cell.source for cell in nbformat.read(NOTEBOOKS / "00_setup.ipynb", as_version=4).cells)
    listed = re.search(r"\(([\d, and]+) there as exercises", source)
    assert listed and re.findall(r"\d\d", listed[1]) == exercises, listed
    answer = source.split("Which notebooks are exercises")[1].split("</details>")[0]
    assert all(f"{number}:" in answer for number in exercises), answer
