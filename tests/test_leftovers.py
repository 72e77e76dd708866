"""What still bills after the workshop, listed read-only with gcloud (its doubles): notebook
07's last check, and ``hybridchat room leftovers`` over a room's projects."""

from __future__ import annotations

import subprocess
import sys

from conftest import DOUBLES_PROJECT

from hybridchat.lab import leftovers

P = DOUBLES_PROJECT
LEFT_BEHIND = {  # a workshop applied, Gemma on its GPU node, the Gateway up; a volume's disk
    "terraform": "applied", "buckets": [f"gs://{P}_cloudbuild"], "pod_polls": 9,
    "cloud": {"cluster": {"name": "gradio-chat-cluster", "location": "us-central1", "autopilot": True},
              "database": {"name": "chat-app-db", "type": "FIRESTORE_NATIVE", "locationId": "nam5"}},
    "objects": {"deployment.apps/vllm-gemma-deployment": "gemma3-12b-deploy.yaml",
                "gateway.gateway.networking.k8s.io/gradio-chat-gateway": "chat-gateway.yaml"},
    "disks": [("pvc-5c1e9a7b", "us-central1-b"), ("someone-elses-disk", "europe-west1-b")],
}


def test_each_resource_left_is_named_with_the_command_that_deletes_it(doubles, capsys):
    doubles(**LEFT_BEHIND)
    assert leftovers.report(P, "us-central1") is False
    shown = capsys.readouterr().out
    for line in [
        f"❌ GKE clusters: gradio-chat-cluster (us-central1) is left. Delete it: gcloud container clusters delete "
        f"gradio-chat-cluster --location=us-central1 --project={P}",
        "❌ GPU nodes: gk3-gradio-chat-cluster-nap-1abc2def-5f1e (2 GPU) is left. Delete it: delete the Gemma "
        "Deployment or the cluster",
        f"❌ disks: pvc-5c1e9a7b is left. Delete it: gcloud compute disks delete pvc-5c1e9a7b --zone=us-central1-b "
        f"--project={P}",
        "❌ load balancers: gkegw1-4k2m-default-gradio-chat-gateway-7n3x9q2w5e8r is left. Delete it: gcloud compute "
        "forwarding-rules delete gkegw1-4k2m-default-gradio-chat-gateway-7n3x9q2w5e8r --global",
        f"❌ IP addresses: gradio-chat-ip (34.117.48.201) is left. Delete it: gcloud compute addresses delete "
        f"gradio-chat-ip --global --project={P}",
        f"❌ certificates: gradio-chat-cert is left. Delete it: gcloud compute ssl-certificates delete gradio-chat-cert "
        f"--global --project={P}",
        f"❌ buckets: gs://{P}_cloudbuild is left. Delete it: gcloud storage rm --recursive gs://{P}_cloudbuild",
        f"❌ Firestore databases: chat-app-db is left. Delete it: gcloud firestore databases delete "
        f"--database=chat-app-db --project={P}",
        f"❌ Artifact Registry repositories: chat-app-repo is left. Delete it: gcloud artifacts repositories delete "
        f"chat-app-repo --location=us-central1 --project={P}",
        f"Something still bills in {P}",
    ]:
        assert line in shown, f"{line}\n--- not in ---\n{shown}"
    assert "someone-elses-disk" not in shown, "another region's disk is not the workshop's"


def test_a_project_with_nothing_left_is_all_checked(doubles, capsys):
    doubles()
    assert leftovers.report(P, "us-central1") is True
    shown = capsys.readouterr().out
    assert shown.count("✅") == len(leftovers.KINDS) and "❌" not in shown
    assert f"Nothing of the workshop's kinds bills in {P} (us-central1)." in shown


def test_a_project_that_cannot_be_listed_is_not_called_clean(doubles, capsys):
    doubles()
    assert leftovers.report("not-my-project", "us-central1") is False
    shown = capsys.readouterr().out
    assert shown.count("❓ ") == len(leftovers.KINDS) and "does not have permission" in shown
    assert "not every kind could be listed" in shown and "✅" not in shown


def test_room_leftovers_checks_each_project_of_the_room(doubles, tmp_path):
    doubles(**LEFT_BEHIND, room_projects=["attendee-2"])
    room = tmp_path / "room.txt"
    room.write_text(f"# the morning's room\n{P}\n\nattendee-2   # Bob\n")
    done = subprocess.run([sys.executable, "-m", "hybridchat.cli", "room", "leftovers", "--projects", str(room)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    mine, bobs = done.stdout.split("== attendee-2\n")
    assert mine.startswith(f"== {P}\n") and mine.count("❌") == 9
    assert bobs.count("✅") == len(leftovers.KINDS) and "❌" not in bobs
    assert done.stdout.rstrip().endswith(f"1 of 2 projects clean; still billing or not listed: {P}")
    room.write_text("# nobody yet\n")
    empty = subprocess.run([sys.executable, "-m", "hybridchat.cli", "room", "leftovers", "--projects", str(room)],
                           capture_output=True, text=True, timeout=120)
    assert empty.returncode == 2 and "lists no project" in empty.stderr
