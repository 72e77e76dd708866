"""The workshop's parameters, set once in notebook 00 and read by every notebook from
``workshop.json``; notebook 07 will not clean up a gcp workshop in local mode."""

from __future__ import annotations

import json

import nbformat
import papermill
import pytest
from notebook_runs import execute, outputs
from test_infra_exercise import blocks_written

from hybridchat.lab import workshop
from hybridchat.lab.workspace import prepare


def test_parameters_are_the_defaults_until_00_saves_them_and_each_save_keeps_the_rest(tmp_path, capsys):
    assert [workshop.saved(name, tmp_path) for name in workshop.DEFAULTS] == list(workshop.DEFAULTS.values())
    workshop.save(tmp_path, MODE="gcp", PROJECT_ID="my-project")
    assert "Saved in workshop.json, which the next notebooks read: MODE='gcp', PROJECT_ID='my-project'" in (
        capsys.readouterr().out)
    workshop.save(tmp_path, REGION="europe-west4")
    assert workshop.load(tmp_path) == {**workshop.DEFAULTS, "MODE": "gcp", "PROJECT_ID": "my-project",
                                       "REGION": "europe-west4"}
    assert workshop.saved("CLUSTER_NAME", tmp_path) == "gradio-chat-cluster"


@pytest.mark.parametrize(
    "text, said",
    [("{\"MODE\": \"gcp\",}", "workshop.json is not valid JSON (Expecting property name enclosed in double quotes, line 1)"),
     ('{"MODE": ["gcp"]}', "should map each parameter to a string"),
     ('["gcp"]', "should map each parameter to a string")],
)
def test_a_broken_parameters_file_says_how_to_mend_it(tmp_path, text, said):
    (tmp_path / workshop.FILE).write_text(text)
    with pytest.raises(workshop.WorkshopFileInvalid, match="run notebook 00 again") as refused:
        workshop.saved("MODE", tmp_path)
    assert said in str(refused.value)


def test_only_the_workshops_parameters_and_modes_are_saved(tmp_path):
    with pytest.raises(ValueError, match="not workshop parameters: PROJECT"):
        workshop.save(tmp_path, PROJECT="my-project")
    with pytest.raises(ValueError, match="MODE must be 'local' or 'gcp', not 'cloud'"):
        workshop.save(tmp_path, MODE="cloud")
    assert not (tmp_path / workshop.FILE).exists(), "nothing saved"


def test_a_local_clean_up_of_a_gcp_workshop_is_refused(tmp_path):
    workshop.refuse_local_over_gcp("local", tmp_path)  # no workshop.json: nothing to say
    workshop.save(tmp_path, MODE="gcp", PROJECT_ID="my-project")
    workshop.refuse_local_over_gcp("gcp", tmp_path)
    with pytest.raises(workshop.WrongMode, match="ran in gcp mode on project 'my-project'"):
        workshop.refuse_local_over_gcp("local", tmp_path)


@pytest.mark.slow
def test_00_saves_the_parameters_once_and_01_and_07_run_on_them(lab_env, tmp_path):
    workspace = tmp_path / "workspace"
    prepare(workspace)
    blocks_written(workspace / "infra")  # notebook 01's exercise, as a learner writes it
    setup = workspace / "00_setup.ipynb"
    execute(setup, setup, MODE="local", REGION="europe-west4", CLUSTER_NAME="room-cluster")
    assert json.loads((workspace / workshop.FILE).read_text())["REGION"] == "europe-west4"

    provision = workspace / "01_provision_infra.ipynb"
    shown = outputs(execute(provision, provision))  # no parameters given: the saved ones
    assert "get-credentials room-cluster --region=europe-west4" in shown

    workshop.save(workspace, MODE="gcp", PROJECT_ID="workshop-project")  # as 00 in gcp mode saves them
    cleanup = workspace / "07_cleanup.ipynb"
    with pytest.raises(papermill.PapermillExecutionError, match="WrongMode") as refused:
        execute(cleanup, cleanup, MODE="local", CONFIRM_DESTROY=True)
    assert "ran in gcp mode on project 'workshop-project'" in str(refused.value)
    stopped_at = outputs(nbformat.read(cleanup, as_version=4))
    assert "would run" not in stopped_at and "local stand-in" not in stopped_at, "it stopped before anything"
