"""``moco submit`` and ``moco jobs``: experiments on a remote Ray cluster through the Ray Jobs API.

``moco submit FILE`` validates the experiment here, then hands the cluster a job: the validated config
(one YAML file, the job's ``working_dir``), the project code (``--code upload``: ``moco_core`` and
``service`` as ``py_modules``; ``--code image``: already installed in the cluster's image) and the
entrypoint ``python -m service.cli pretrain experiment.yaml`` (or ``tune``). The job runs on the head
node as the driver of an ordinary ``moco pretrain``: checkpoints go to ``run.storage_path`` (shared
storage), metrics and the encoder to the MLflow tracking server.

The dashboard address comes from ``--address``, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``.
When the cluster asks for a token (``RAY_AUTH_MODE=token`` on the cluster), the client sends the one in
``RAY_AUTH_TOKEN``, else in the file ``RAY_AUTH_TOKEN_PATH``, else in ``~/.ray/auth_token``; a cluster
that does not ask for one is never sent one.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import shlex
import socket
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from moco_core.config import ExperimentConfig, dump_yaml, load_config

DEFAULT_DASHBOARD_PORT = 8265
CONFIG_FILE = "experiment.yaml"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
CODE_PACKAGES = ("moco_core", "service")
REPO = Path(__file__).resolve().parents[1]
PROBE_TIMEOUT_S = 10.0


class JobsError(RuntimeError):
    """A job could not be submitted or queried; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------
# the cluster: address, token, client


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
    if parts.port is None:
        address = f"{parts.scheme}://{parts.netloc}:{DEFAULT_DASHBOARD_PORT}{parts.path}"
    return address


def _host_is_loopback(host: str | None) -> bool:
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
    return _host_is_loopback(urlsplit(address).hostname)


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
            f"cannot reach the Ray dashboard at {address} ({_short(reason)}). Is the head running, and is "
            "this its dashboard address (port 8265 by default)? Check --address / RAY_API_SERVER_ADDRESS"
        ) from None
    if r.status_code in (200, 401, 403):
        if r.status_code == 200:
            try:
                if "ray_version" not in r.json():
                    raise ValueError
            except ValueError:
                raise JobsError(f"{address} answered, but it is not a Ray dashboard (no Ray version at {url})") from None
        return r.status_code
    raise JobsError(
        f"{address} answered HTTP {r.status_code} on {url}: not a Ray dashboard. Use the head's dashboard "
        "address (port 8265 by default), not the GCS port (6379) or another service"
    )


def _short(reason: Any) -> str:
    text = str(reason)
    for key in ("Connection refused", "Name or service not known", "No route to host", "timed out"):
        if key in text:
            return key
    return text[:200]


def connect(address: str | None = None, token: str | None = None):
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
    else:
        token = None  # never send a token to a cluster that does not ask for one
    from ray.job_submission import JobSubmissionClient

    _quiet_sdk_logs()
    try:
        return JobSubmissionClient(address, headers=_headers(token))
    except (ConnectionError, RuntimeError) as e:
        raise JobsError(f"the Ray dashboard at {address} cannot be used: {e}") from None


def _quiet_sdk_logs() -> None:
    """The Jobs SDK logs each package upload and socket close at INFO; `moco -v` still shows them."""
    import logging

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in list(logging.root.manager.loggerDict):
            if name.startswith(("ray.dashboard", "ray._private.runtime_env")):
                logging.getLogger(name).setLevel(logging.WARNING)


def _call(client, what: str, fn, *args):
    """Run an SDK call; turn its errors into messages that say what to do."""
    import requests

    try:
        return fn(*args)
    except requests.exceptions.RequestException as e:
        raise JobsError(f"{what}: lost the connection to the Ray dashboard at {client._address} ({_short(e)})") from None
    except RuntimeError as e:
        text = str(e)
        if "does not exist" in text or "status code 404" in text:
            job = args[0] if args else "?"
            raise JobsError(
                f"no job {job!r} on the Ray cluster at {client._address}; `moco jobs list` shows its jobs"
            ) from None
        raise JobsError(f"{what}: {text}") from None


def job_info(client, job_id: str):
    return _call(client, f"job {job_id}", client.get_job_info, job_id)


# ---------------------------------------------------------------------------------------------
# packaging an experiment


def job_tracking_uri(cfg: ExperimentConfig, address: str, override: str | None = None) -> str:
    """The MLflow URI the job will use; refused when the cluster cannot reach it."""
    from .tracking import is_local_uri, resolve_tracking_uri

    uri = _absolute_local(override) if override else resolve_tracking_uri(cfg.tracking.uri)
    if is_loopback(address):
        return uri  # the same machine: an absolute sqlite path or a loopback server is reachable
    if is_local_uri(uri):
        raise JobsError(
            f"MLflow tracking URI {uri} is a store on this machine; the Ray cluster at {address} cannot reach "
            "it. Give the URI of a tracking server the cluster can reach: --tracking-uri http://MLFLOW:5000 "
            "(or MLFLOW_TRACKING_URI / tracking.uri)"
        )
    host = urlsplit(uri).hostname
    if _host_is_loopback(host):
        raise JobsError(
            f"MLflow tracking URI {uri} points at this machine's loopback interface; from the Ray cluster at "
            f"{address} it means the cluster node itself. Give the address the cluster reaches the "
            "server at: --tracking-uri http://MLFLOW:5000"
        )
    return uri


def _absolute_local(uri: str) -> str:
    """``uri`` as given (``--tracking-uri`` beats MLFLOW_TRACKING_URI), a local path made absolute."""
    from .tracking import resolve_tracking_uri

    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        return resolve_tracking_uri(uri)
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def check_cluster_paths(cfg: ExperimentConfig, address: str) -> None:
    """Data and checkpoints must be where every node of the cluster finds them."""
    for key, value in (("data.root", cfg.data.root), ("data.splits_dir", cfg.data.splits_dir)):
        if value and not Path(value).is_absolute():
            raise JobsError(
                f"{key}={value} is a relative path; on a cluster it must be a path every node sees "
                f"(a shared mount or a folder in the image), e.g. --set {key}=/data/{Path(value).name}"
            )
    sp = cfg.run.storage_path
    if not sp or ("://" not in sp and not Path(sp).is_absolute()):
        hint = "" if is_loopback(address) else " or an absolute path on a shared filesystem (NFS) that every node mounts"
        raise JobsError(
            f"run.storage_path={sp!r}: checkpoints of a cluster run must go to shared storage, never to one "
            f"worker's local disk; set an s3:// (or gs://) URI{hint}, e.g. --set run.storage_path=s3://BUCKET/moco-runs"
        )


def package(
    cfg: ExperimentConfig, folder: Path, *, tune: bool, code: str, tracking_uri: str, resume: str | None = None
) -> tuple[str, dict]:
    """Write the job's config into ``folder``; the entrypoint and the runtime environment. ``resume``:
    ``""`` continues the latest unfinished run (sweep, with ``tune``) of the experiment, a name that one."""
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"uri": tracking_uri})})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(dump_yaml(cfg))
    runtime_env: dict[str, Any] = {
        "working_dir": str(folder),
        "env_vars": {"MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1"},
    }
    if code == "upload":
        missing = [p for p in CODE_PACKAGES if not (REPO / p / "__init__.py").is_file()]
        if missing:
            raise JobsError(
                f"--code upload needs the project's source folders {', '.join(missing)} under {REPO}; "
                "use --code image when the cluster's image has the project installed"
            )
        runtime_env["py_modules"] = [str(REPO / p) for p in CODE_PACKAGES]
        runtime_env["excludes"] = ["__pycache__", "*.pyc"]
    entrypoint = f"python -m service.cli {'tune' if tune else 'pretrain'} {CONFIG_FILE}"
    if resume is not None:  # `moco pretrain --resume [RUN]` / `moco tune --resume [SWEEP]`
        entrypoint += " --resume" + (f" {shlex.quote(resume)}" if resume else "")
    return entrypoint, runtime_env


def submit(
    cfg: ExperimentConfig,
    address: str | None = None,
    *,
    tune: bool = False,
    code: str = "upload",
    tracking_uri: str | None = None,
    token: str | None = None,
    resume: str | None = None,
) -> tuple[str, Any]:
    """Submit one experiment; returns ``(submission id, client)``. Everything that can be checked here
    (config, paths, tracking URI, cluster, token) is checked before the job exists."""
    address = resolve_address(address)
    check_cluster_paths(cfg, address)
    uri = job_tracking_uri(cfg, address, tracking_uri)
    client = connect(address, token)
    sub_id = f"moco-{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    with tempfile.TemporaryDirectory(prefix="moco-job-") as tmp:
        entrypoint, runtime_env = package(cfg, Path(tmp) / "job", tune=tune, code=code, tracking_uri=uri,
                                          resume=resume)
        metadata = {"moco_name": cfg.name, "moco_command": "tune" if tune else "pretrain", "moco_tracking_uri": uri}
        _call(
            client, "submit",
            lambda: client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata,
                                      submission_id=sub_id),
        )
    return sub_id, client


# ---------------------------------------------------------------------------------------------
# status and logs


def failure_reason(info, logs: str | None) -> str:
    """What went wrong, in a few lines: the job's ``error:`` lines if it printed any, else Ray's message."""
    lines = (logs or "").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    if starts:
        return "\n".join(lines[starts[-1] :][:20])
    message = (info.message or "").strip()
    first = message.splitlines()[0] if message else ""
    tail = [line for line in lines if line.strip()][-10:]
    return "\n".join([first, *tail]) if tail else first or f"error type {info.error_type}"


def _when(ts_ms: int | None) -> str:
    return datetime.fromtimestamp(ts_ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ts_ms else "-"


def format_status(info, reason: str | None = None) -> str:
    meta = info.metadata or {}
    status = str(getattr(info.status, "value", info.status))
    out = [f"job {info.submission_id}: {status}"]
    rows = [
        ("experiment", f"{meta.get('moco_command', '?')} {meta.get('moco_name', '?')}" if meta else None),
        ("entrypoint", info.entrypoint),
        ("started", _when(info.start_time)),
        ("ended", _when(info.end_time) if info.end_time else None),
        ("MLflow", meta.get("moco_tracking_uri")),
    ]
    if status != "FAILED" and info.message:
        rows.append(("message", info.message.strip().splitlines()[0]))
    out += [f"  {k:<11} {v}" for k, v in rows if v]
    if reason:
        out.append("  reason:")
        out += [f"    {line}" for line in reason.splitlines()]
    return "\n".join(out)


def wait_for(client, job_id: str, statuses: tuple[str, ...] = TERMINAL, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(job_info(client, job_id).status.value)
        if status in statuses or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def follow_logs(client, job_id: str, out=None) -> None:
    """Print the job's logs as they come until the job ends."""
    import asyncio

    out = out or sys.stdout
    job_info(client, job_id)  # an unknown id is an error here, not a silent empty stream

    async def _tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(_tail())
    except RuntimeError as e:
        raise JobsError(f"following the logs of job {job_id}: {e}") from None
    except OSError as e:  # aiohttp client errors are OSErrors
        raise JobsError(f"following the logs of job {job_id}: lost the Ray dashboard ({_short(e)})") from None


# ---------------------------------------------------------------------------------------------
# commands


def _status_exit(client, job_id: str, print_reason: bool = True) -> int:
    """Exit code of a job: 1 when it failed (the reason goes to stderr), else 0."""
    info = job_info(client, job_id)
    status = str(info.status.value)
    if status == "FAILED":
        if print_reason:
            logs = _call(client, "logs", client.get_job_logs, job_id)
            print(format_status(info, failure_reason(info, logs)), file=sys.stderr)
        return 1
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    extra = []
    if args.workers is not None:
        extra.append(f"scaling.workers={args.workers}")
    if args.gpu:
        extra.append("scaling.use_gpu=true")
    cfg = load_config(args.file, [*args.overrides, *extra])
    job_id, client = submit(cfg, args.address, tune=args.tune, code=args.code, tracking_uri=args.tracking_uri,
                            resume=args.resume)
    address = client._address
    print(f"submitted job {job_id} to {address}")
    if not args.wait:
        addr = "" if os.environ.get("RAY_API_SERVER_ADDRESS") == address else f" --address {address}"
        print(f"  status: moco jobs status {job_id}{addr}")
        print(f"  logs:   moco jobs logs {job_id} --follow{addr}")
        print(f"  stop:   moco jobs stop {job_id}{addr}")
        return 0
    follow_logs(client, job_id)
    status = wait_for(client, job_id, timeout_s=30)
    print(f"job {job_id}: {status}", file=sys.stderr)
    return _status_exit(client, job_id)


def cmd_jobs_list(args: argparse.Namespace) -> int:
    client = connect(args.address)
    jobs = [j for j in _call(client, "list", client.list_jobs) if j.submission_id]
    if not jobs:
        print(f"no jobs on {client._address}")
        return 0
    jobs.sort(key=lambda j: j.start_time or 0)
    print(f"{'JOB':<44} {'STATUS':<10} {'STARTED':<20} EXPERIMENT")
    for j in jobs:
        meta = j.metadata or {}
        what = f"{meta['moco_command']} {meta.get('moco_name', '')}" if "moco_command" in meta else j.entrypoint[:40]
        print(f"{j.submission_id:<44} {str(j.status.value):<10} {_when(j.start_time):<20} {what}")
    return 0


def cmd_jobs_status(args: argparse.Namespace) -> int:
    client = connect(args.address)
    info = job_info(client, args.job_id)
    status = str(info.status.value)
    if status == "FAILED":
        logs = _call(client, "logs", client.get_job_logs, args.job_id)
        print(format_status(info, failure_reason(info, logs)))
        return 1
    print(format_status(info))
    return 0


def cmd_jobs_logs(args: argparse.Namespace) -> int:
    client = connect(args.address)
    if args.follow:
        follow_logs(client, args.job_id)
        status = wait_for(client, args.job_id, timeout_s=30)
        print(f"job {args.job_id}: {status}", file=sys.stderr)
        return _status_exit(client, args.job_id, print_reason=False)
    job_info(client, args.job_id)
    sys.stdout.write(_call(client, "logs", client.get_job_logs, args.job_id))
    return 0


def cmd_jobs_stop(args: argparse.Namespace) -> int:
    client = connect(args.address)
    before = str(job_info(client, args.job_id).status.value)
    if before in TERMINAL:
        print(f"job {args.job_id} already ended: {before}")
        return 0
    _call(client, "stop", client.stop_job, args.job_id)
    status = wait_for(client, args.job_id, timeout_s=args.timeout)
    if status not in TERMINAL:
        raise JobsError(
            f"job {args.job_id} is still {status} {args.timeout:.0f} s after the stop request; "
            "check `moco jobs status` again, or the Ray dashboard"
        )
    print(f"job {args.job_id}: {status}")
    return 0


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, metavar="URL",
                   help="the head's dashboard, http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS, else RAY_ADDRESS); "
                        "a Ray auth token is read from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token "
                        "when the cluster asks for one")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``moco submit`` and ``moco jobs`` to the ``moco`` parser."""
    p = sub.add_parser(
        "submit", help="submit an experiment to a Ray cluster (Ray Jobs API)",
        description="Validate the experiment here and submit it to a Ray cluster as a job that runs "
                    "`moco pretrain` (or `moco tune` with --tune) on the head node. The validated config "
                    "travels with the job. Data paths and run.storage_path must be paths every node sees; "
                    "the MLflow tracking URI must be one the cluster can reach.",
    )
    p.add_argument("file", metavar="FILE", help="experiment YAML file (see experiments/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set optim.epochs=100 (repeatable; validated like the file)")
    _add_address(p)
    p.add_argument("--tune", action="store_true", help="run a Ray Tune sweep (`moco tune`) instead of one pretraining")
    p.add_argument("--code", choices=("upload", "image"), default="upload",
                   help="upload: send this checkout's moco_core/ and service/ with the job (default); "
                        "image: use the project installed in the cluster's image")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking URI as the cluster reaches it, e.g. http://mlflow:5000 "
                        "(default: MLFLOW_TRACKING_URI, else tracking.uri, else sqlite:///mlflow.db here, "
                        "which only a cluster on this machine can use)")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers (sets scaling.workers)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (sets scaling.use_gpu)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN",
                   help="continue the latest unfinished run (sweep, with --tune) of this experiment, or the named "
                        "one, from its checkpoints under run.storage_path, in the same MLflow run")
    p.add_argument("--wait", action="store_true", help="follow the job's logs until it ends; exit 1 if it fails")
    p.set_defaults(func=cmd_submit)

    jobs = sub.add_parser("jobs", help="jobs on a Ray cluster: list, status, logs, stop").add_subparsers(
        dest="jobs_cmd", required=True, metavar="ACTION")
    p = jobs.add_parser("list", help="the cluster's jobs and their status")
    _add_address(p)
    p.set_defaults(func=cmd_jobs_list)
    p = jobs.add_parser("status", help="a job's status; when it failed, the reason (exit 1)")
    p.add_argument("job_id", metavar="ID", help="submission id printed by `moco submit`")
    _add_address(p)
    p.set_defaults(func=cmd_jobs_status)
    p = jobs.add_parser("logs", help="a job's output (training progress, errors)")
    p.add_argument("job_id", metavar="ID", help="submission id printed by `moco submit`")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends; exit 1 if it failed")
    _add_address(p)
    p.set_defaults(func=cmd_jobs_logs)
    p = jobs.add_parser("stop", help="stop a job and wait until it has stopped")
    p.add_argument("job_id", metavar="ID", help="submission id printed by `moco submit`")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="seconds to wait for the stop (default 60)")
    _add_address(p)
    p.set_defaults(func=cmd_jobs_stop)


__all__ = ["JobsError", "add_commands", "connect", "submit", "resolve_address", "is_loopback", "find_token",
           "job_tracking_uri", "check_cluster_paths", "failure_reason", "format_status", "wait_for"]
