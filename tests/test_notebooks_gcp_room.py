"""The notebooks in gcp mode without a Gemma of the attendee's own: with a room's Gemma
(``GEMMA_URL``, keyed), and with Gemma never Ready, where 04, 06 and 08 run their Gemini parts."""

from __future__ import annotations

import json
import re

import cloud_doubles
import pytest
from conftest import GCP_PROJECT
from notebook_runs import SOLUTIONS, execute, learners_answers, outputs
from test_notebooks_gcp import GCP_COMMANDS, WAIT_FOR_GEMMA, run_the_workshop
from test_room_gemma import KEY as ROOM_KEY

from hybridchat import serve_local
from hybridchat.lab.local import BackgroundServer
from hybridchat.lab.workspace import prepare

# With a room's Gemma (GEMMA_URL): no GPU quota or token checked, nothing deployed or forwarded
# for Gemma; the app's pods get its address and key (the doubles' log masks both).
ROOM_COMMANDS = {
    **GCP_COMMANDS,
    "00_setup.ipynb": [c for c in GCP_COMMANDS["00_setup.ipynb"] if "regions describe" not in c and "project-info" not in c],
    "02_deploy_gemma.ipynb": [],
    "04_model_callers.ipynb": [],
    "05_launch_app.ipynb": [
        "kubectl delete configmap gemma-room --ignore-not-found",
        "kubectl create configmap gemma-room '--from-literal=url=****'",
        "kubectl delete secret gemma-room-key --ignore-not-found",
        "kubectl create secret generic gemma-room-key '--from-literal=key=****'",
        *GCP_COMMANDS["05_launch_app.ipynb"],
    ],
    "06_chat_history.ipynb": [],
    "08_next_steps.ipynb": [],
}


@pytest.mark.slow
def test_with_a_rooms_gemma_every_notebook_runs_and_nothing_is_deployed_for_gemma(
    cloud, stand_in, tiny_model, tmp_path, monkeypatch
):
    monkeypatch.setenv("HYBRIDCHAT_VLLM_API_KEY", ROOM_KEY)  # as the attendee exports it (else it is asked)
    with BackgroundServer(serve_local.create_app(tiny_model, api_key=ROOM_KEY)) as room:
        workspace = tmp_path / "workspace"
        texts, ran = run_the_workshop(cloud, workspace, room, stand_in, GEMMA_URL=room)
    assert ran == ROOM_COMMANDS
    assert "Gemma is the room's: no GPU quota" in texts["00_setup.ipynb"] and texts["00_setup.ipynb"].count("✅") == 5
    assert "✅ the room's Gemma answers: Gemma is up, serving local-stand-in/" in texts["02_deploy_gemma.ipynb"]
    assert "✅ call_gemma_model answered" in texts["04_model_callers.ipynb"]
    assert "Gemma · your code: " in texts["05_launch_app.ipynb"], "the pod reached the room's Gemma with its key"
    assert re.search(r"gemma: ['\"]", texts["06_chat_history.ipynb"]), "hybridchat's path too"
    saved = [path.read_text() for path in workspace.glob("*.ipynb")]
    assert len(saved) == len(SOLUTIONS) and not any(ROOM_KEY in text for text in saved), "the key reached a notebook"


@pytest.mark.slow
def test_with_gemma_never_ready_04_06_and_08_run_their_gemini_parts_and_say_what_they_skipped(cloud, tmp_path):
    state = json.loads((cloud / "state.json").read_text())
    state.update(kube_context="gke_workshop", pending_polls=10**6,  # no GPU node, ever
                 cloud={"cluster": {"name": "gradio-chat-cluster", "location": "us-central1", "autopilot": True}},
                 objects={"deployment.apps/vllm-gemma-deployment": "gemma3-12b-deploy.yaml",
                          "service/gemma-service": "gemma3-12b-deploy.yaml"})
    (cloud / "state.json").write_text(json.dumps(state))
    workspace = tmp_path / "workspace"
    copies = {copy.name[:2]: copy for copy in prepare(workspace).copied if copy.suffix == ".ipynb"}
    texts = {}
    for number in ("03", "04", "06", "08", "07"):
        learners_answers(copies[number])
        texts[number] = outputs(execute(copies[number], copies[number], MODE="gcp", PROJECT_ID=GCP_PROJECT))
        if number != "07":
            assert cloud_doubles.commands(cloud, workspace) == ([] if number == "03" else WAIT_FOR_GEMMA), "no forward"
    for number in ("04", "06", "08"):
        assert "⚠️ Gemma is left out of this notebook: Gemma's pod is not Ready (Pending: waiting for a GPU node" in (
            texts[number]), texts[number]
    assert "⏭ checking call_gemma_model: skipped, Gemma's pod is not Ready" in texts["04"]
    assert "✅ call_gemini_model answered" in texts["04"]
    assert "⏭ the gemma turn: skipped" in texts["06"] and re.search(r"gemini: ['\"]", texts["06"])
    assert "signed in, on any device:     True" in texts["08"], "08 ran to its end on Gemini"
    assert "⏭ the side-by-side turn: skipped" in texts["06"] and "⏭ the blind test: skipped" in texts["08"]
    assert "No picks between gemma and gemini yet." in texts["08"]
    # 07 without CONFIRM_DESTROY deletes nothing, and its check says what still bills.
    assert "would run: kubectl delete" in texts["07"]
    assert "❌ GKE clusters: gradio-chat-cluster (us-central1) is left. Delete it: gcloud container clusters delete" in (
        texts["07"]) and f"Something still bills in {GCP_PROJECT}" in texts["07"]
