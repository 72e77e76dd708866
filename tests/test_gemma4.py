"""Gemma 4 beside the codelab's Gemma 3: chosen in notebook 02 (gcp mode, the cloud doubles), its
template followed by the app from the served model's name, its thought kept out of the answer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cloud_doubles
import pytest
from conftest import GCP_PROJECT
from notebook_runs import NOTEBOOKS, execute, outputs
from test_notebooks_gcp import WAIT_FOR_GEMMA

from hybridchat.lab import workshop


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
