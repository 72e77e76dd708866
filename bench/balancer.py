"""A real load balancer on this machine: HAProxy (Debian's) in front of app processes, with
cookie stickiness as the Gateway's ``GENERATED_COOKIE`` affinity keeps a browser on one replica;
or in front of model servers, round-robin or by conversation (a consistent hash on the header
the app sends Gemma's server, ``CONVERSATION_HEADER``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.servers import serving
from hybridchat.backends.base import CONVERSATION_HEADER
from hybridchat.lab.local import free_port

COOKIE = "HCREPLICA"


ROUTINGS = {  # how HAProxy picks a model server: by turn, or by the conversation's header
    "round-robin": "balance roundrobin",
    "by conversation": f"balance hdr({CONVERSATION_HEADER})\n  hash-type consistent",
}


def config(port: int, servers: list[str], balance: str, health: str, sticky: bool) -> str:
    check = "check cookie app{n}" if sticky else "check"
    lines = "\n".join(f"  server app{n} {url.removeprefix('http://')} {check.format(n=n)}" for n, url in enumerate(servers))
    cookie = f"  cookie {COOKIE} insert indirect nocache\n" if sticky else ""
    # A streamed reply is one long response: the timeouts are the Gateway's one hour.
    return f"""global
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 3600s
  timeout server 3600s
frontend chat
  bind 127.0.0.1:{port}
  default_backend apps
backend apps
  {balance}
  option httpchk GET {health}
{cookie}{lines}
"""


@contextmanager
def haproxy(apps: list[str]) -> Iterator[str]:
    """HAProxy balancing over ``apps`` (their URLs), a browser kept on one; yields its URL once it answers."""
    with _running(config(port := free_port(), apps, "balance roundrobin", "/healthz", sticky=True), port, "/healthz") as url:
        yield url


@contextmanager
def model_haproxy(servers: list[str], routing: str) -> Iterator[str]:
    """HAProxy in front of model servers, routed as ``ROUTINGS[routing]`` says."""
    with _running(config(port := free_port(), servers, ROUTINGS[routing], "/health", sticky=False), port, "/health") as url:
        yield url


@contextmanager
def _running(configuration: str, port: int, health: str) -> Iterator[str]:
    binary = shutil.which("haproxy")
    if binary is None:
        raise RuntimeError("haproxy is not installed: `apt-get install haproxy` (make bench does)")
    with tempfile.TemporaryDirectory(prefix="hybridchat-haproxy-") as folder:
        path = Path(folder) / "haproxy.cfg"
        path.write_text(configuration)
        with serving([binary, "-db", "-f", str(path)], f"http://127.0.0.1:{port}{health}"):
            yield f"http://127.0.0.1:{port}"
