"""The Ray auth token goes only to the cluster that asks for it: a small HTTP server on 127.0.0.1 that
speaks the dashboard's version and jobs endpoints and records every request's headers, reached by the
real Jobs SDK in a client process holding a token (``RAY_AUTH_MODE=token`` in its environment, as on a
laptop that also talks to a token cluster)."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import ray

from .conftest import REPO

TOKEN = "0123456789abcdef0123456789abcdef"


class Dashboard:
    """Answers /api/version and /api/jobs/ as a Ray dashboard would; ``ask`` makes it require a token."""

    def __init__(self, ask: bool, host: str = "127.0.0.1") -> None:
        self.ask, self.seen = ask, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                outer.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                if outer.ask and self.headers.get("Authorization") != f"Bearer {TOKEN}":  # any case
                    self._send(401, {"error": "unauthenticated"})
                elif self.path.startswith("/api/version"):
                    self._send(200, {"version": "4", "ray_version": ray.__version__, "ray_commit": "x"})
                elif self.path.startswith("/api/jobs"):
                    self._send(200, [])
                else:
                    self._send(404, {})

            def _send(self, code: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.address = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def tokens_sent(self) -> list[str]:
        return [h["authorization"] for _, h in self.seen if TOKEN in h.get("authorization", "")]


@pytest.fixture
def dashboard(request):
    d = Dashboard(ask=request.param)
    yield d
    d.server.shutdown()


def list_jobs(address: str) -> subprocess.CompletedProcess:
    """``moco jobs list`` in a client process that holds the token the way Ray's own tools read it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "jobs", "list", "--address", address],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("dashboard", [False], indirect=True)
def test_a_cluster_that_does_not_ask_is_never_sent_the_token(dashboard):
    out = list_jobs(dashboard.address)
    assert out.returncode == 0, out.stderr
    assert any(p.startswith("/api/jobs") for p, _ in dashboard.seen), dashboard.seen  # the SDK did talk
    assert dashboard.tokens_sent() == []


@pytest.mark.parametrize("dashboard", [True], indirect=True)
def test_a_cluster_that_asks_gets_the_token(dashboard):
    out = list_jobs(dashboard.address)
    assert out.returncode == 0, out.stderr
    assert dashboard.tokens_sent(), dashboard.seen
    assert "clear text" not in out.stderr  # loopback: no warning


def this_hosts_address() -> str | None:
    """This machine's address on its network (not loopback), or None."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("10.255.255.255", 1))  # no packet is sent: only the route is looked up
        ip = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if ipaddress.ip_address(ip).is_loopback else ip


def test_a_token_over_plain_http_beyond_this_machine_is_warned_about():
    host = this_hosts_address()
    if host is None:
        pytest.skip("this machine has no network address besides loopback")
    d = Dashboard(ask=True, host=host)
    try:
        out = list_jobs(d.address)
    finally:
        d.server.shutdown()
    assert out.returncode == 0, out.stderr
    assert f"warning: the Ray auth token goes to {d.address} in clear text" in out.stderr, out.stderr
