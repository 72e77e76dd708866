"""Connections a public address meets: half-sent requests cut off at a deadline, a liveness
probe that answers through a slow-connection attack, and a file limit the app never reaches
(hybridchat/server.py)."""

from __future__ import annotations

import re
import selectors
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
from infra_files import manifest

from bench.servers import serving
from hybridchat.lab.local import free_port


def half_sent(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never the blank line that ends it
    return sock


def keep_up(port: int, attacking: threading.Event, socks: list[socket.socket]) -> None:
    """Hold ``socks`` open while ``attacking``: each one the app closes is opened again."""
    with selectors.DefaultSelector() as watched:  # epoll: select() stops at descriptor 1,024
        for sock in socks:
            watched.register(sock, selectors.EVENT_READ)
        while attacking.is_set():
            for key, _ in watched.select(timeout=0.5):  # the app cut it off: open another
                watched.unregister(key.fileobj)
                key.fileobj.close()
                watched.register(half_sent(port), selectors.EVENT_READ)
        for key in list(watched.get_map().values()):
            key.fileobj.close()


def test_half_sent_requests_are_cut_off_and_leave_room_for_everyone_else(tmp_path):
    port = free_port()
    env = {"HYBRIDCHAT_REQUEST_TIMEOUT": "2", "HYBRIDCHAT_STORE_URL": f"sqlite:///{tmp_path}/h.db"}
    # As in a container whose soft file limit is low: the app raises it to the hard one.
    argv = ["prlimit", "--nofile=256:4096", sys.executable, "-m", "hybridchat.cli", "app", "--port", str(port)]
    with serving(argv, f"http://127.0.0.1:{port}/healthz", env):
        half_sent = []
        for _ in range(400):  # more than the soft limit
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never the blank line that ends it
            half_sent.append(sock)
        trickle = socket.create_connection(("127.0.0.1", port))
        started = time.monotonic()
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200, "still answering"
        closed_at = None
        for n in range(12):  # a byte every half second: more bytes do not push the deadline back
            try:
                trickle.sendall(b"GET /healthz HTTP/1.1\r\n"[n : n + 1])
            except OSError:
                closed_at = time.monotonic() - started
                break
            time.sleep(0.5)
        for sock in half_sent:
            sock.settimeout(5)
            assert sock.recv(1024) == b"", "closed by the server once its deadline passed"
            sock.close()
        trickle.close()
    assert closed_at is not None and closed_at < 4.5, closed_at


def test_the_liveness_probe_answers_within_its_timeout_while_slow_connections_hold_every_descriptor(tmp_path):
    """1,100 half-sent requests, kept up (each one the app closes is opened again), against an app
    whose file limit is 1,024: each probe of the liveness path answers within the manifest's timeout."""
    probe = manifest("Deployment", "gradio-chat")["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    port, attacking = free_port(), threading.Event()
    argv = ["prlimit", "--nofile=1024:1024", sys.executable, "-m", "hybridchat.cli", "app", "--port", str(port)]
    with serving(argv, f"http://127.0.0.1:{port}{probe['httpGet']['path']}", {"HYBRIDCHAT_STORE_URL": f"sqlite:///{tmp_path}/h.db"}):
        attacking.set()
        attacker = threading.Thread(target=keep_up, args=(port, attacking, [half_sent(port) for _ in range(1100)]))
        attacker.start()
        try:
            for _ in range(3):
                answer = httpx.get(f"http://127.0.0.1:{port}{probe['httpGet']['path']}", timeout=probe["timeoutSeconds"])
                assert answer.status_code == 200
        finally:
            attacking.clear()
            attacker.join(timeout=30)




def test_the_app_never_runs_out_of_descriptors_and_says_so_once_not_per_connection(tmp_path):
    """The same attack, 1,100 half-sent requests against a file limit of 1,024: the app keeps
    descriptors in hand (its most connections is the limit less the ones it keeps for models and
    files), lets each new connection take the place of the oldest half-sent one, and logs one
    line with counts instead of a traceback for every connection it could not take."""
    port, attacking, log = free_port(), threading.Event(), tmp_path / "app.log"
    argv = ["prlimit", "--nofile=1024:1024", sys.executable, "-m", "hybridchat.cli", "app", "--port", str(port)]
    with log.open("wb") as output, serving(argv, f"http://127.0.0.1:{port}/healthz",
                                           {"HYBRIDCHAT_STORE_URL": f"sqlite:///{tmp_path}/h.db"}, output) as app:
        attacking.set()
        attacker = threading.Thread(target=keep_up, args=(port, attacking, [half_sent(port) for _ in range(1100)]))
        attacker.start()
        most_open, answered = 0, []
        try:
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                most_open = max(most_open, len(list(Path(f"/proc/{app.pid}/fd").iterdir())))
                started = time.monotonic()
                answered.append((httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code,
                                 time.monotonic() - started))
        finally:
            attacking.clear()
            attacker.join(timeout=30)
    print(f"most descriptors open: {most_open}; /healthz answered in {max(t for _, t in answered):.2f} s at most")
    assert most_open < 1024 - 64, f"{most_open} descriptors open: the app ran (close to) out"
    probe = manifest("Deployment", "gradio-chat")["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    assert all(status == 200 for status, _ in answered), answered
    assert max(took for _, took in answered) < probe["timeoutSeconds"], answered
    text = log.read_text()
    assert "Traceback" not in text and "Too many open files" not in text, text[-2000:]
    [said] = [line for line in text.splitlines() if "at its most connections" in line]
    assert re.search(r"closed \d+ whose request was still arriving or that sat idle, refused \d+ new ones", said), said
