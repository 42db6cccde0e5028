"""The Ray cluster's dashboard, as the Jobs API reaches it: its address, the auth token, a client.

The dashboard address comes from ``--address``, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``.
When the cluster asks for a token (``RAY_AUTH_MODE=token`` on the cluster), the client sends the one in
``RAY_AUTH_TOKEN``, else in the file ``RAY_AUTH_TOKEN_PATH``, else in ``~/.ray/auth_token``; a cluster
that does not ask for one is never sent one (even where ``RAY_AUTH_MODE=token`` would make Ray's SDK add
it to every request), and a token about to cross the network over plain ``http://`` is warned about.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from moco_core.errors import UserError

DEFAULT_DASHBOARD_PORT = 8265
PROBE_TIMEOUT_S = 10.0


class JobsError(UserError, RuntimeError):
    """A job could not be submitted or queried; the message says why and what to do."""


def resolve_address(address: str | None) -> str:
    """The dashboard URL: ``--address``, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``."""
    source = "--address"
    if not address:
        for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
            if os.environ.get(var):
                address, source = os.environ[var], var
                break
    if not address:
        raise JobsError(
            "no Ray cluster given: pass --address http://HEAD:8265 (the head's dashboard), "
            "or set RAY_API_SERVER_ADDRESS"
        )
    address = address.strip().rstrip("/")
    if address == "auto" or address.startswith("ray://"):
        raise JobsError(
            f"{source}={address!r} is not a dashboard address; the Jobs API needs http://HEAD:8265 "
            "(the head's dashboard port), e.g. --address http://127.0.0.1:8265"
        )
    if "://" not in address:
        address = "http://" + address
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JobsError(f"{source}={address!r}: expected http://HEAD:PORT, e.g. http://127.0.0.1:8265")
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise JobsError(
            f"{source}={address!r}: {parts.netloc.rpartition(':')[2]!r} is not a port (1-65535); "
            f"expected http://HEAD:PORT, e.g. http://{parts.hostname}:{DEFAULT_DASHBOARD_PORT}"
        )
    if port is None:
        address = f"{parts.scheme}://{parts.netloc}:{DEFAULT_DASHBOARD_PORT}{parts.path}"
    return address


def host_is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addrs = {info[4][0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def is_loopback(address: str) -> bool:
    """Whether the cluster's dashboard is on this machine's loopback interface."""
    return host_is_loopback(urlsplit(address).hostname)


def find_token() -> str | None:
    """The Ray auth token this client has: ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH``, or
    ``~/.ray/auth_token`` (the places Ray itself reads)."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise JobsError(f"RAY_AUTH_TOKEN_PATH={path}: no such file")
        return p.read_text().strip() or None
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file():
        return default.read_text().strip() or None
    return None


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def probe(address: str, token: str | None = None, timeout_s: float = PROBE_TIMEOUT_S) -> int:
    """GET ``/api/version``: the HTTP status (200, 401, 403); any other answer or no answer is an error."""
    import requests

    url = address + "/api/version"
    try:
        r = requests.get(url, headers=_headers(token), timeout=timeout_s)
    except requests.exceptions.Timeout:
        raise JobsError(
            f"the Ray dashboard at {address} did not answer within {timeout_s:.0f} s; check the address "
            "and that the head's dashboard port is reachable from here (firewall, port-forward, tunnel)"
        ) from None
    except requests.exceptions.RequestException as e:
        reason = getattr(e, "args", [e])[0]
        if any(k in str(reason) for k in ("BadStatusLine", "RemoteDisconnected", "InvalidHeader")):
            raise JobsError(
                f"{address} does not speak HTTP: not a Ray dashboard. Use the head's dashboard address "
                "(port 8265 by default), not the GCS port (6379) or another service"
            ) from None
        raise JobsError(
            f"cannot reach the Ray dashboard at {address} ({short_reason(reason)}). "
            f"Is the head running, and is "
            "this its dashboard address (port 8265 by default)? Check --address / RAY_API_SERVER_ADDRESS"
        ) from None
    if r.status_code in (200, 401, 403):
        if r.status_code == 200:
            try:
                if "ray_version" not in r.json():
                    raise ValueError
            except ValueError:
                raise JobsError(
                    f"{address} answered, but it is not a Ray dashboard (no Ray version at {url})"
                ) from None
        return r.status_code
    raise JobsError(
        f"{address} answered HTTP {r.status_code} on {url}: not a Ray dashboard. Use the head's dashboard "
        "address (port 8265 by default), not the GCS port (6379) or another service"
    )


def short_reason(reason: Any) -> str:
    text = str(reason)
    for key in ("Connection refused", "Name or service not known", "No route to host", "timed out"):
        if key in text:
            return key
    return text[:200]


def jobs_client(address: str | None = None, token: str | None = None) -> Any:
    """A ``JobSubmissionClient`` for the cluster, with the auth token when the cluster asks for one."""
    address = resolve_address(address)
    status = probe(address)
    if status != 200:
        token = token or find_token()
        if not token:
            raise JobsError(
                f"the Ray cluster at {address} requires an auth token (token authentication is on) and none "
                "was found: set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a file holding it, or put it in "
                "~/.ray/auth_token. The cluster's token is in its RAY_AUTH_TOKEN (see docs/cluster.md)"
            )
        if probe(address, token) != 200:
            raise JobsError(
                f"the Ray cluster at {address} rejected the auth token (from RAY_AUTH_TOKEN, "
                "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); use the token the cluster was started with"
            )
        warn_clear_text(address)
    else:
        token = None  # never send a token to a cluster that does not ask for one
    from ray.job_submission import JobSubmissionClient

    _quiet_sdk_logs()
    # Ray's SDK adds the token of this environment (RAY_AUTH_MODE=token) to every request unless the
    # headers hold an Authorization of their own: an empty one keeps it from a cluster that did not ask
    headers = _headers(token) or {"Authorization": ""}
    try:
        client = JobSubmissionClient(address, headers=headers)
    except (ConnectionError, RuntimeError) as e:
        raise JobsError(f"the Ray dashboard at {address} cannot be used: {e}") from None
    if token is None:
        client._headers.pop("Authorization", None)  # the SDK's own copy: later requests carry none
    return client


def warn_clear_text(address: str) -> None:
    """A token sent over plain http:// beyond this machine can be read on the way: say so."""
    if urlsplit(address).scheme == "http" and not is_loopback(address):
        print(
            f"warning: the Ray auth token goes to {address} in clear text (http://); reach the dashboard "
            "through https:// (a TLS proxy) or an SSH tunnel (ssh -L 8265:localhost:8265 HEAD), see "
            "docs/cluster.md",
            file=sys.stderr,
        )


def _quiet_sdk_logs() -> None:
    """The Jobs SDK logs each package upload and socket close at INFO; `moco -v` still shows them."""
    import logging

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in list(logging.root.manager.loggerDict):
            if name.startswith(("ray.dashboard", "ray._private.runtime_env")):
                logging.getLogger(name).setLevel(logging.WARNING)


def call(client, what: str, fn, *args):
    """Run an SDK call; turn its errors into messages that say what to do."""
    import requests

    try:
        return fn(*args)
    except requests.exceptions.RequestException as e:
        raise JobsError(
            f"{what}: lost the connection to the Ray dashboard at {client._address} ({short_reason(e)})"
        ) from None
    except RuntimeError as e:
        text = str(e)
        if "does not exist" in text or "status code 404" in text:
            job = args[0] if args else "?"
            raise JobsError(
                f"no job {job!r} on the Ray cluster at {client._address}; `moco jobs list` shows its jobs"
            ) from None
        raise JobsError(f"{what}: {text}") from None


def job_info(client, job_id: str):
    return call(client, f"job {job_id}", client.get_job_info, job_id)


__all__ = [
    "JobsError",
    "resolve_address",
    "is_loopback",
    "host_is_loopback",
    "find_token",
    "probe",
    "jobs_client",
    "call",
    "job_info",
    "short_reason",
]
