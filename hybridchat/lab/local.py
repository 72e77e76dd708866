"""The local stand-in and the app for a lab, started once and shared by all the notebooks.

The stand-in (``hybridchat serve-local``) runs as its own process, so it outlives the notebook
that started it; its pid and log are kept in the lab folder (``HYBRIDCHAT_LAB_DIR``, default
``~/.hybridchat/lab``) for ``stop_local_servers`` in the clean-up notebook.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from starlette.types import ASGIApp

from hybridchat.config import Settings

_PID_FILE = "serve-local.pid"
_APP_FILE = "app.url"  # the address of the app notebook 05 serves, while it does


def lab_dir() -> Path:
    path = Path(os.environ.get("HYBRIDCHAT_LAB_DIR", "~/.hybridchat/lab")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def serving(url: str) -> bool:
    """Whether the stand-in answers at ``url``."""
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# What serve-local writes as it loads its model, and the stage each line begins.
_LOAD_STAGES = {
    "loading local model": "loading the model",
    "converting": "converting its file, once (about 20 s)",
    "Loading weights": "reading its weights",
    "Waiting for application startup": "starting to listen",
}


def load_stage(log_text: str) -> str:
    """Where the stand-in is in its start-up, from what it has logged so far."""
    at, stage = max((log_text.rfind(line), stage) for line, stage in _LOAD_STAGES.items())
    return stage if at >= 0 else "starting Python (importing torch and transformers)"


def wait_until_serving(url: str, process: subprocess.Popen[bytes], *, timeout: float = 600,
                       log: Path | None = None) -> None:
    """Wait until the server ``process`` started answers at ``url``: like vLLM, the stand-in
    listens only once its model has loaded. A line shows the time waited and, from ``log``
    (its output), the stage it is at."""
    from tqdm.auto import tqdm

    started = time.monotonic()
    where = log or "its output"
    with tqdm(desc="Loading the local model", bar_format="{desc}: {elapsed} {postfix}") as bar:
        while not serving(url):
            if process.poll() is not None:
                raise RuntimeError(f"serve-local stopped (exit {process.returncode}); see {where}")
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"the stand-in did not load its model in {timeout:g} s; see {where}")
            if log is not None:
                bar.set_postfix_str(load_stage(log.read_text(errors="replace")), refresh=False)
            time.sleep(0.5)
            bar.refresh()
        bar.set_description("The local model is loaded")
        bar.set_postfix_str("")


def start_stand_in(settings: Settings | None = None, *, timeout: float = 600) -> str:
    """Start ``hybridchat serve-local`` unless it already answers; wait until its model is loaded."""
    settings = settings or Settings()
    url = settings.local_url
    if serving(url):
        print(f"The local stand-in is already up at {url}")
        return url
    log = lab_dir() / "serve-local.log"  # this start's output only: its stages are read from it
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "hybridchat.cli", "serve-local", "--port", str(settings.local_port),
             *(["--legacy"] if settings.vllm_api == "legacy" else [])],
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
    (lab_dir() / _PID_FILE).write_text(str(process.pid))
    wait_until_serving(url, process, timeout=timeout, log=log)
    print(f"The local stand-in is up at {url}")
    return url


def stop_local_servers() -> bool:
    """Stop the stand-in this lab started; whether there was one."""
    pid_file = lab_dir() / _PID_FILE
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    pid_file.unlink()
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    for _ in range(100):
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    os.killpg(pid, signal.SIGKILL)
    return True


def app_still_serving() -> str | None:
    """The URL of notebook 05's app if it still answers (served from that notebook's kernel,
    it stops with it); None when none does."""
    record = lab_dir() / _APP_FILE
    if not record.exists():
        return None
    url = record.read_text().strip()
    try:
        if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
            return url
    except httpx.HTTPError:
        pass
    record.unlink(missing_ok=True)  # its kernel stopped without stopping it
    return None


def stop_process(process: subprocess.Popen[Any], timeout: float = 10) -> None:
    """Ask a child process to stop (SIGTERM); kill it if it has not within ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BackgroundServer:
    """An ASGI app served by uvicorn on 127.0.0.1 from a thread of this process (a notebook
    kernel, a test); started on creation, ``port=0`` picks a free port.

    ``with BackgroundServer(app) as url: ...`` stops it at the end of the block.
    """

    def __init__(self, app: ASGIApp, *, port: int = 0, timeout: float = 60):
        import uvicorn

        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the server did not start on 127.0.0.1:{port} (is the port taken?)")
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self._server.servers[0].sockets[0].getsockname()[1]}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=1)
        if self._thread.is_alive():  # a connection still open (a client's keep-alive, a stream) holds it
            self._server.force_exit = True
            self._thread.join(timeout=10)

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RunningApp(BackgroundServer):
    """The chat app served from this Python process (a notebook kernel) in a thread; what it logs
    (a line per turn, the traceback of a mistake in the learner's code) goes to ``log``, a file in
    the lab's folder: a kernel's own output shows no thread's log."""

    def __init__(self, settings: Settings | None = None, *, port: int = 7860):
        from hybridchat.app import create_app
        from hybridchat.redact import RedactingFilter

        self.log = lab_dir() / "app.log"
        self._handler = logging.FileHandler(self.log, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._handler.addFilter(RedactingFilter())
        package = logging.getLogger("hybridchat")
        package.addHandler(self._handler)
        self._level = package.level  # put back when it stops
        package.setLevel(min(package.getEffectiveLevel(), logging.INFO))
        try:
            super().__init__(create_app(settings or Settings()), port=port)
        except BaseException:
            self._close_log()
            raise
        (lab_dir() / _APP_FILE).write_text(self.url)  # for 07, which cannot stop another kernel's thread

    def stop(self) -> None:
        super().stop()
        self._close_log()
        record = lab_dir() / _APP_FILE
        if record.exists() and record.read_text() == self.url:
            record.unlink()

    def _close_log(self) -> None:
        package = logging.getLogger("hybridchat")
        package.removeHandler(self._handler)
        package.setLevel(self._level)
        self._handler.close()
