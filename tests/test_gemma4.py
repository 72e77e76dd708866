"""Gemma 4 beside the codelab's Gemma 3: chosen in notebook 02 (gcp mode, the cloud doubles), its
template followed by the app from the served model's name, its thought kept out of the answer."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cloud_doubles
import pytest
from conftest import GCP_PROJECT
from fault_server import REPLY, THOUGHT
from notebook_runs import NOTEBOOKS, execute, outputs
from openai.types.chat import ChatCompletionMessage
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from test_notebooks_gcp import ROOT, WAIT_FOR_GEMMA

from hybridchat.app import create_app
from hybridchat.backends import GenerationParams, VllmBackend, VllmClient
from hybridchat.backends.vllm_client import _reasoning
from hybridchat.chat import ChatService, Conversation
from hybridchat.chat_view import THOUGHT_TITLE, to_messages
from hybridchat.config import Settings
from hybridchat.history import process_message_gemma
from hybridchat.lab import workshop
from hybridchat.lab.local import BackgroundServer
from hybridchat.store import open_store


@pytest.mark.slow
def test_notebook_02_deploys_gemma_4_when_chosen(cloud, tmp_path):
    state = json.loads((cloud / "state.json").read_text())
    state.update(kube_context="gke_workshop")  # notebook 01 made the cluster
    (cloud / "state.json").write_text(json.dumps(state))
    deploy = Path(shutil.copy(NOTEBOOKS / "02_deploy_gemma.ipynb", tmp_path))
    shown = outputs(execute(deploy, deploy, MODE="gcp", PROJECT_ID=GCP_PROJECT, GEMMA="gemma-4-e4b"))
    assert cloud_doubles.commands(cloud) == [
        "kubectl create secret generic hf-secret '--from-literal=hf_api_token=****'",
        "kubectl apply -f <repo>/deploy/gemma4-e4b-deploy.yaml",
        *WAIT_FOR_GEMMA, "kubectl get events --field-selector involvedObject.kind=Pod --sort-by=.lastTimestamp",
        *WAIT_FOR_GEMMA * 3,
    ]
    assert "--model=google/gemma-4-E4B-it" in shown and "manifest:      deploy/gemma4-e4b-deploy.yaml" in shown
    deployed = json.loads((cloud / "state.json").read_text())["objects"]
    assert deployed == {"deployment.apps/vllm-gemma-deployment": workshop.GEMMAS["gemma-4-e4b"],
                        "service/gemma-service": workshop.GEMMAS["gemma-4-e4b"]}


def test_an_unknown_gemma_is_refused_before_anything_is_saved(tmp_path):
    with pytest.raises(workshop.UnknownGemma, match="'gemma-3-12b', 'gemma-4-e4b'"):
        workshop.save(tmp_path, GEMMA="gemma-4-31b")
    assert not (tmp_path / workshop.FILE).exists()


# --- thinking: the thought apart from the answer -------------------------------------------------


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "one-call"])
def test_a_thought_is_shown_collapsed_saved_apart_and_never_sent_back(fault_server, tmp_path, stream):
    fault_server.mode = "thinking"
    store = open_store(f"sqlite:///{tmp_path}/h.db")
    service = ChatService({"gemma": VllmBackend(VllmClient(fault_server.url, model="m"))}, store, stream=stream)
    conversation = Conversation("visitor:alice")
    steps = list(service.respond(conversation, "Hi", "gemma", GenerationParams()))
    turn = steps[-1].turn
    assert (turn.reply, turn.thought, turn.status) == (REPLY, THOUGHT, "ok"), "the answer holds no thought"
    [saved] = store.load(conversation.session_id)
    assert (saved.reply, saved.thought) == (REPLY, THOUGHT), "saved apart from the answer"

    shown = to_messages(conversation.turns)
    assert [m["role"] for m in shown] == ["user", "assistant", "assistant"]
    thought, answer = shown[1], shown[2]
    assert thought["metadata"] == {"title": THOUGHT_TITLE, "status": "done"}, "collapsed, above the answer"
    assert "<img" not in thought["content"] and "I should greet back" in thought["content"], "made safe, as replies"
    assert REPLY in answer["content"] and THOUGHT not in answer["content"]
    if stream:
        thinking = next(step for step in steps if step.thought and not step.reply)
        assert to_messages([], thinking)[1]["metadata"]["status"] == "pending", "open while the model thinks"

    list(service.respond(conversation, "And then?", "gemma", GenerationParams()))
    sent = fault_server.bodies[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] == REPLY and not any(THOUGHT[:20] in m["content"] for m in sent), "never history"


def test_a_reply_cut_off_while_thinking_keeps_its_thought_and_says_why(fault_server, tmp_path):
    fault_server.mode = "thinking_cut"
    service = ChatService({"gemma": VllmBackend(VllmClient(fault_server.url, model="m"))},
                          open_store(f"sqlite:///{tmp_path}/h.db"))
    turn = list(service.respond(Conversation("visitor:alice"), "Hi", "gemma", GenerationParams()))[-1].turn
    assert (turn.reply, turn.thought, turn.status, turn.error) == ("", THOUGHT, "cut_off", None)
    assert "stopped at the max-tokens limit" in to_messages([turn])[-1]["content"]


@pytest.mark.slow
def test_vllms_reasoning_parser_fills_the_field_the_client_reads():
    """vLLM 0.32's own response classes, serialised as its server sends them: the thought is in
    ``reasoning``, in a chat message and in a streamed delta, where ``_reasoning`` looks."""
    python = ROOT / ".venv-vllm" / "bin" / "python"
    if not python.exists():
        pytest.fail("the real vLLM is not installed: `make test` installs it in .venv-vllm")
    script = (
        "import json\n"
        "from vllm.entrypoints.openai.chat_completion.protocol import ChatMessage\n"
        "from vllm.entrypoints.generate.base.protocol import DeltaMessage\n"
        "print(json.dumps([ChatMessage(role='assistant', content='a', reasoning='t').model_dump(exclude_none=True),\n"
        "                  DeltaMessage(reasoning='t').model_dump(exclude_none=True)]))\n"
    )
    done = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=300)
    message, delta = json.loads(done.stdout.strip().splitlines()[-1])
    for sent in (ChatCompletionMessage.model_validate(message), ChoiceDelta.model_validate(delta)):
        assert _reasoning(sent) == "t", sent


@pytest.mark.slow
def test_in_the_browser_the_thought_is_collapsed_above_the_answer(fault_server, browser, tmp_path):
    fault_server.mode = "thinking"
    backends = {"gemma": VllmBackend(VllmClient(fault_server.url, model="google/gemma-4-E4B-it"), label="Gemma")}
    web = create_app(Settings(store_url=f"sqlite:///{tmp_path}/h.db"), backends=backends)
    with BackgroundServer(web) as url:
        page = browser.new_page()
        page.goto(url)
        page.fill("#message textarea", "Hi")
        page.press("#message textarea", "Enter")
        page.get_by_text(REPLY).wait_for(timeout=30000)
        title = page.get_by_text(THOUGHT_TITLE)
        assert title.is_visible(), "the thought is there, titled"
        # Collapsed once the answer is done (open while it was thinking): waited for, not sampled.
        page.get_by_text("I should greet back").wait_for(state="hidden", timeout=10000)
        title.click()
        page.get_by_text("I should greet back").wait_for(state="visible", timeout=5000)
        bubbles = page.locator('#chat [data-testid="bot"]')
        assert THOUGHT_TITLE in bubbles.first.inner_text() and REPLY in bubbles.last.inner_text(), "above the answer"
        page.close()


@pytest.mark.parametrize(("template", "kept"), [("gemma4", True), ("gemma", False)])
def test_a_raw_gemma_4_completion_keeps_its_thought_markers_and_its_thought_apart(fault_server, template, kept):
    """vLLM leaves special tokens out of a completion's text unless asked: a thought channel's
    markers with them, which would leave the thought in the reply (call_gemma_model's path)."""
    fault_server.mode = "thinking"
    prompt = process_message_gemma("Hi", [], template=template)
    reply, finish, thought = VllmClient(fault_server.url, model="m").complete_prompt(prompt, GenerationParams())
    assert (fault_server.bodies[-1].get("skip_special_tokens") is False) is kept
    assert (reply, finish, thought) == (REPLY, "stop", THOUGHT), "the answer alone; the thought apart"
