"""The official Firestore emulator, run as a java process we own (so stopping it is certain).

>>> with FirestoreEmulator() as emulator:          # doctest: +SKIP
...     store = open_store(f"firestore://chat-app-db?project={emulator.project}")
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

from hybridchat.lab.local import free_port


class EmulatorMissing(RuntimeError):
    """The emulator (a Google Cloud CLI component) or Java is not installed."""


def emulator_jar() -> Path:
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise EmulatorMissing("gcloud is not installed: the Firestore emulator ships with the Google Cloud CLI")
    root = subprocess.run(
        [gcloud, "info", "--format=value(installation.sdk_root)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    jar = Path(root) / "platform" / "cloud-firestore-emulator" / "cloud-firestore-emulator.jar"
    if not jar.is_file():
        raise EmulatorMissing(f"no Firestore emulator at {jar}: install google-cloud-cli-firestore-emulator")
    if shutil.which("java") is None:
        raise EmulatorMissing("java is not installed: the Firestore emulator needs Java 17")
    return jar


class FirestoreEmulator:
    """Start with ``start()`` (or ``with``). It sets ``FIRESTORE_EMULATOR_HOST``; ``stop()``
    only stops the process (it can start again on the same port), the ``with`` block's end also
    restores the variable.

    The emulator keeps its documents in memory only: ``stop(keep_data=True)`` exports them
    first and the next ``start()`` loads them back, as a real database outage would leave them.
    An emulator so started seeds *every* project's database with them, at that project's first
    call (``seeded``): ``unseed()`` starts it afresh, empty.
    """

    def __init__(self, port: int | None = None, project: str = "hybridchat-test"):
        self.jar = emulator_jar()
        self.port, self.project = port or free_port(), project
        self.host = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[str] | None = None
        self._previous_host: str | None = None
        self._exports = tempfile.TemporaryDirectory(prefix="firestore-emulator-")
        self._import: Path | None = None
        self.seeded = False

    def start(self, timeout: float = 60) -> None:
        argv = ["java", "-cp", str(self.jar), "com.google.cloud.datastore.emulator.firestore.CloudFirestore",
                "start", "--host=127.0.0.1", f"--port={self.port}"]
        self.seeded = self._import is not None
        if self._import is not None:
            argv.append(f"--import-data={self._import}")
            self._import = None
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if "Dev App Server is now running" in line:
                # Keep draining its output so the pipe never fills and blocks it.
                threading.Thread(target=self.process.stdout.read, daemon=True).start()
                self._wait_until_answering(deadline)
                if os.environ.get("FIRESTORE_EMULATOR_HOST") != self.host:
                    self._previous_host = os.environ.get("FIRESTORE_EMULATOR_HOST")
                    os.environ["FIRESTORE_EMULATOR_HOST"] = self.host
                return
            if time.monotonic() > deadline:
                break
        self.stop()
        raise RuntimeError("the Firestore emulator did not start")

    def unseed(self) -> None:
        """Start again without the imported documents, if it was started with them."""
        if self.seeded and self.process is not None:
            self.stop()
            self.start()

    def _wait_until_answering(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{self.host}/", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the Firestore emulator started but does not answer")

    def stop(self, *, keep_data: bool = False, database: str = "chat-app-db") -> None:
        if self.process is None:
            return
        if keep_data:
            self._import = self._export(database)
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def _export(self, database: str) -> Path:
        """Export ``database``'s documents; the path ``--import-data`` takes."""
        target = Path(self._exports.name) / uuid.uuid4().hex
        target.mkdir()
        httpx.post(
            f"http://{self.host}/emulator/v1/projects/{self.project}:export",
            json={"database": f"projects/{self.project}/databases/{database}", "export_directory": str(target)},
            timeout=60,
        ).raise_for_status()
        return next(target.glob("*/*.overall_export_metadata"))

    def reset(self, database: str = "chat-app-db") -> None:
        """Delete every document of ``database``."""
        httpx.delete(
            f"http://{self.host}/emulator/v1/projects/{self.project}/databases/{database}/documents"
        ).raise_for_status()

    def __enter__(self) -> FirestoreEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._exports.cleanup()
        if self._previous_host is None:
            os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
        else:
            os.environ["FIRESTORE_EMULATOR_HOST"] = self._previous_host
