"""Notebook 01's Terraform exercise: the learner's ``workspace/infra``, its checkers and their hints."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hybridchat.lab import check_infra
from hybridchat.lab.check import CheckFailed
from hybridchat.lab.make_exercises import BEGIN, END
from hybridchat.lab.workspace import learner_infra

ROOT = Path(__file__).resolve().parents[1]
CHECKERS = (check_infra.files, check_infra.cluster, check_infra.database, check_infra.document,
            check_infra.workload_identity)


def blocks_written(infra: Path) -> Path:
    """Each solution block of ``infra/main.tf`` written under its TODO comment in the learner's
    copy, as a learner would (without the solution markers)."""
    reference = (ROOT / "infra" / "main.tf").read_text()
    mine = (infra / "main.tf").read_text()
    for region in re.findall(rf"\n{re.escape(BEGIN)}\n(.*?)\n{re.escape(END)}\n", reference, re.DOTALL):
        todo = reference[: reference.index(region)].rsplit("# TODO: ", 1)[1].split("\n")[0]
        comment = next(line for line in mine.splitlines() if line.endswith(todo) or todo in line)
        at = mine.index(comment)
        end = mine.index("\n\n", at)
        mine = f"{mine[:end]}\n{region}{mine[end:]}"
    (infra / "main.tf").write_text(mine)
    return infra


@pytest.fixture
def written(tmp_path) -> Path:
    return blocks_written(learner_infra(tmp_path / "infra"))


def test_the_learners_copy_leaves_out_the_four_blocks_and_keeps_the_rest(tmp_path):
    infra = learner_infra(tmp_path / "infra")
    assert sorted(path.name for path in infra.glob("*.tf")) == sorted(path.name for path in (ROOT / "infra").glob("*.tf"))
    exercise = (infra / "main.tf").read_text()
    for kind in ("google_container_cluster", "google_firestore_database", "google_firestore_document",
                 "google_project_iam_member"):
        assert f'resource "{kind}"' not in exercise, f"{kind} is the learner's to write"
    assert "ksa_principal =" not in exercise
    for kept in ("google_project_service", "google_artifact_registry_repository", "google_compute_global_address",
                 "google_iap_web_iam_member", "# TODO: Create a GKE Autopilot cluster"):
        assert kept in exercise
    assert (infra / "variables.tf").read_bytes() == (ROOT / "infra" / "variables.tf").read_bytes()
    (infra / "main.tf").write_text("# the learner's")
    learner_infra(infra)
    assert (infra / "main.tf").read_text() == "# the learner's", "a learner's file is never replaced"


@pytest.mark.slow
def test_the_blocks_written_in_pass_every_checker_and_checkov(written, capsys):
    for checker in CHECKERS:
        checker(written)
    printed = capsys.readouterr().out
    assert printed.count("✅") == len(CHECKERS) and "laid out as `terraform fmt` writes them" in printed
    checkov = shutil.which("checkov") or str(ROOT / ".venv-checkov" / "bin" / "checkov")
    result = subprocess.run([checkov, "-d", str(written), "--compact", "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize(
    "checker, old, new, hint",
    [
        (check_infra.cluster, "  enable_autopilot = true\n", "",
         "infra/main.tf, line 35: the cluster is not in Autopilot mode: add `enable_autopilot = true`"),
        (check_infra.database, 'type        = "FIRESTORE_NATIVE"', 'type        = "DATASTORE_MODE"',
         "write `type = \"FIRESTORE_NATIVE\"`, not 'DATASTORE_MODE'"),
        (check_infra.document, "database    = google_firestore_database.chat.name", 'database    = "chat-app-db"',
         "the document does not wait for the database"),
        (check_infra.workload_identity, "subject/ns/${var.namespace}/sa/${var.ksa_name}", "subject/ns/chat/sa/${var.ksa_name}",
         "the principal names ns/chat/sa/gradio-chat-ksa, but the app runs as gradio-chat-ksa in namespace default"),
        (check_infra.workload_identity, 'role    = "roles/aiplatform.user"', 'role    = "roles/editor"',
         "roles/editor is refused for the app's principal"),
        (check_infra.workload_identity, "projects/${var.project_number}/locations", "projects/123456789012/locations",
         "build the principal from `${var.project_number}` and `${var.project_id}`"),
        (check_infra.files, "  enable_autopilot = true", "  enable_autopilot=true",
         "infra/main.tf is not laid out as Terraform writes it: run `terraform fmt infra`"),
        (check_infra.files, "  enable_autopilot = true", "  enable_autopilot = ",
         "infra/main.tf, line 54: Terraform cannot read this (Invalid expression): Expected the start of an expression"),
    ],
    ids=["no-autopilot", "datastore-mode", "document-first", "other-account", "editor", "project-written-in",
         "unformatted", "unreadable"],
)
def test_each_mistake_gets_its_own_hint(written, checker, old, new, hint):
    main = written / "main.tf"
    assert old in main.read_text()
    main.write_text(main.read_text().replace(old, new, 1))
    with pytest.raises(CheckFailed) as failed:
        checker(written)
    assert hint in str(failed.value), str(failed.value)
    assert failed.value._render_traceback_() == [f"❌ {failed.value}"], "one line, no traceback"


@pytest.mark.parametrize(
    "checker, old, new",
    [
        (check_infra.document, "database    = google_firestore_database.chat.name", 'database    = "chat-app-db"'),
        (check_infra.workload_identity, 'role    = "roles/aiplatform.user"', 'role    = "roles/editor"'),
        (check_infra.database, 'type        = "FIRESTORE_NATIVE"', 'type        = "DATASTORE_MODE"'),
        (check_infra.cluster, "deletion_protection = false", "deletion_protection = true"),
    ],
    ids=["document-first", "editor", "datastore-mode", "protected"],
)
def test_a_hint_names_the_line_of_the_setting_to_mend_not_its_blocks(written, checker, old, new):
    main = written / "main.tf"
    mended = main.read_text().replace(old, new, 1)
    main.write_text(mended)
    line = mended[: mended.index(new)].count("\n") + 1
    with pytest.raises(CheckFailed) as failed:
        checker(written)
    assert str(failed.value).startswith(f"infra/main.tf, line {line}: "), str(failed.value)


def test_a_setting_written_twice_gets_one_whole_message_at_the_second(written):
    main = written / "main.tf"
    text = main.read_text()
    first_at = text.index('role    = "roles/aiplatform.user"')
    end = text.index("\n", first_at) + 1
    main.write_text(f'{text[:end]}  role    = "roles/editor"\n{text[end:]}')
    first = text[:first_at].count("\n") + 1
    said = []
    for checker in (check_infra.files, check_infra.workload_identity):
        with pytest.raises(CheckFailed) as failed:
            checker(written)
        said.append(str(failed.value))
    if shutil.which("terraform"):  # Terraform's own words, whole, its file reference said as a line
        assert said[0].startswith(f"infra/main.tf, line {first + 1}: Terraform cannot read this (Attribute redefined)")
        assert f'The argument "role" was already set at line {first}. Each argument may be set only once.' in said[0]
    assert said[1] == (f"infra/main.tf, line {first + 1}: `role` is set twice in this block, here and on line {first}; "
                       "Terraform takes each setting once (Attribute redefined). Keep the one you mean and delete "
                       "the other."), "python-hcl2 would read the last one: said as Terraform would refuse it"


def test_a_block_still_to_write_is_named_with_its_todo(tmp_path):
    infra = learner_infra(tmp_path / "infra")
    expected = {
        check_infra.cluster: "infra/main.tf, line 32: the block under `# TODO: Create a GKE Autopilot cluster` is not written yet",
        check_infra.database: "the block under `# TODO: Create a Firestore database` is not written yet",
        check_infra.document: "the block under `# TODO: Create an initial Firestore document` is not written yet",
        check_infra.workload_identity: "`# TODO: Configure the Workload Identity IAM bindings` is not written yet",
    }
    for checker, hint in expected.items():
        with pytest.raises(CheckFailed, match=re.escape(hint)):
            checker(infra)


@pytest.mark.parametrize("mistake", [None, ('role    = "roles/datastore.user"', 'role    = "roles/datastore.owner"')],
                         ids=["as-written", "a-role-changed-after-the-checks"])
def test_check_my_progress_reads_what_apply_made_from_the_learners_files(written, doubles, firestore_emulator, monkeypatch,
                                                                         capsys, mistake):
    from conftest import DOUBLES_PROJECT

    from hybridchat.lab import terraform
    from hybridchat.lab.shell import run

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    if mistake:  # the checks passed, then the file changed before apply
        (written / "main.tf").write_text((written / "main.tf").read_text().replace(*mistake, 1))
    terraform.write_tfvars(DOUBLES_PROJECT, "123456789012", "us-central1", "gradio-chat-cluster", ["user:learner@example.com"],
                           infra=written)
    for step in (terraform.init(written), terraform.plan(written), terraform.apply(written)):
        run(step, echo=False)
    if mistake is None:
        check_infra.in_the_cloud(DOUBLES_PROJECT, "123456789012", "us-central1", "gradio-chat-cluster")
        assert capsys.readouterr().out.count("✅") == 4
        return
    with pytest.raises(CheckFailed, match="the project does not hold the app's principal"):
        check_infra.in_the_cloud(DOUBLES_PROJECT, "123456789012", "us-central1", "gradio-chat-cluster")
    shown = capsys.readouterr().out
    assert shown.count("✅") == 3 and "❌ the app's principal" in shown and "roles/datastore.owner" in shown
