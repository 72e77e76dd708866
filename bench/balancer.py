"""A real load balancer on this machine: HAProxy (Debian's) in front of app processes, with
cookie stickiness as the Gateway's ``GENERATED_COOKIE`` affinity keeps a browser on one replica.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.servers import serving
from hybridchat.lab.local import free_port

COOKIE = "HCREPLICA"


def config(port: int, apps: list[str]) -> str:
    servers = "\n".join(
        f"  server app{n} {url.removeprefix('http://')} check cookie app{n}" for n, url in enumerate(apps)
    )
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
  balance roundrobin
  option httpchk GET /healthz
  cookie {COOKIE} insert indirect nocache
{servers}
"""


@contextmanager
def haproxy(apps: list[str]) -> Iterator[str]:
    """HAProxy balancing over ``apps`` (their URLs); yields its own URL once it answers."""
    binary = shutil.which("haproxy")
    if binary is None:
        raise RuntimeError("haproxy is not installed: `apt-get install haproxy` (make bench does)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="hybridchat-haproxy-") as folder:
        path = Path(folder) / "haproxy.cfg"
        path.write_text(config(port, apps))
        with serving([binary, "-db", "-f", str(path)], f"http://127.0.0.1:{port}/healthz"):
            yield f"http://127.0.0.1:{port}"
