"""``moco submit``: an experiment, validated here, handed to a remote Ray cluster as a job.

The job carries the validated config (one YAML file, the job's ``working_dir``), the project code
(``--code upload``: the Python sources of ``moco_core`` and ``service``, and nothing else found there, as
``py_modules``; ``--code image``: already installed
in the cluster's image) and the entrypoint ``python -m service.cli pretrain experiment.yaml`` (or
``tune``). The job runs on the head node as the driver of an ordinary ``moco pretrain``: checkpoints go
to ``run.storage_path`` (shared storage), metrics and the encoder to the MLflow tracking server.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from moco_core.config import ExperimentConfig, dump_yaml

from .cluster import JobsError, call, host_is_loopback, is_loopback, jobs_client, resolve_address

CONFIG_FILE = "experiment.yaml"
CODE_PACKAGES = ("moco_core", "service")
REPO = Path(__file__).resolve().parents[2]


def job_tracking_uri(configured: str | None, address: str, override: str | None = None) -> str:
    """The MLflow URI the job will use (``override``, else the config's ``tracking.uri``, else the
    environment's); refused when the cluster cannot reach it."""
    from ..tracking import is_local_uri, resolve_tracking_uri

    uri = _absolute_local(override) if override else resolve_tracking_uri(configured)
    if is_loopback(address):
        return uri  # the same machine: an absolute sqlite path or a loopback server is reachable
    if is_local_uri(uri):
        raise JobsError(
            f"MLflow tracking URI {uri} is a store on this machine; "
            f"the Ray cluster at {address} cannot reach "
            "it. Give the URI of a tracking server the cluster can reach: --tracking-uri http://MLFLOW:5000 "
            "(or MLFLOW_TRACKING_URI / tracking.uri)"
        )
    host = urlsplit(uri).hostname
    if host_is_loopback(host):
        raise JobsError(
            f"MLflow tracking URI {uri} points at this machine's loopback interface; from the Ray cluster at "
            f"{address} it means the cluster node itself. Give the address the cluster reaches the "
            "server at: --tracking-uri http://MLFLOW:5000"
        )
    return uri


def _absolute_local(uri: str) -> str:
    """``uri`` as given (``--tracking-uri`` beats MLFLOW_TRACKING_URI), a local path made absolute."""
    from ..tracking import resolve_tracking_uri

    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        return resolve_tracking_uri(uri)
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def check_cluster_paths(cfg: ExperimentConfig, address: str) -> None:
    """Data and checkpoints must be where every node of the cluster finds them."""
    for key, value in (("data.root", cfg.data.root), ("data.splits_dir", cfg.data.splits_dir)):
        refuse_relative(f"{key}=", value, f"--set {key}=")
    sp = cfg.run.storage_path
    if not sp or ("://" not in sp and not Path(sp).is_absolute()):
        hint = (
            ""
            if is_loopback(address)
            else " or an absolute path on a shared filesystem (NFS) that every node mounts"
        )
        raise JobsError(
            f"run.storage_path={sp!r}: checkpoints of a cluster run must go to shared storage, never to one "
            f"worker's local disk; set an s3:// (or gs://) URI{hint}, e.g. --set run.storage_path=s3://BUCKET/moco-runs"
        )


def refuse_relative(named: str, value: str | None, fix: str) -> None:
    """A path the job reads (``named`` + ``value``, as the user wrote it) must be one every node sees:
    a relative one is refused with the ``fix`` to give instead (URIs pass)."""
    if value and "://" not in value and not Path(value).is_absolute():
        raise JobsError(
            f"{named}{value} is a relative path; on a cluster it must be a path every node sees "
            f"(a shared mount or a folder in the image), e.g. {fix}/data/{Path(value).name}"
        )


def package(
    cfg: ExperimentConfig,
    folder: Path,
    *,
    tune: bool,
    code: str,
    tracking_uri: str,
    resume: str | None = None,
    overrides: list[str] | None = None,
) -> tuple[str, dict]:
    """Write the job's config into ``folder`` (and, with ``--code upload``, the project's Python sources
    beside it); the entrypoint and the runtime environment. ``resume``: ``""`` continues the latest
    unfinished run (sweep, with ``tune``) of the experiment, a name that one; the ``overrides``
    (``--set`` items) then travel with it, for the job to refuse those the recorded config does not
    share."""
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"uri": tracking_uri})})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(dump_yaml(cfg))
    entrypoint = f"python -m service.cli {'tune' if tune else 'pretrain'} {CONFIG_FILE}"
    if resume is not None:  # `moco pretrain --resume [RUN]` / `moco tune --resume [SWEEP]`
        entrypoint += " --resume" + (f" {shlex.quote(resume)}" if resume else "")
        entrypoint += "".join(f" --set {shlex.quote(o)}" for o in overrides or [])
    return entrypoint, runtime_env(folder, code, tracking_uri)


def runtime_env(folder: Path, code: str, tracking_uri: str) -> dict[str, Any]:
    """The job's working directory ``folder``, its MLflow store, and (``--code upload``) the project's
    Python sources copied beside ``folder``."""
    env: dict[str, Any] = {
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
        code_dir = folder.parent / "code"
        env["py_modules"] = [python_sources(REPO / p, code_dir / p) for p in CODE_PACKAGES]
    return env


def python_sources(package: Path, dest: Path) -> str:
    """A copy of ``package`` at ``dest`` holding its ``.py`` files only (a stray ``.env``, a cache or a
    dataset under the source folder never travels to the cluster); returns ``dest``."""

    def not_python(folder: str, names: list[str]) -> set[str]:
        keep = {n for n in names if n.endswith(".py") or (Path(folder, n).is_dir() and n != "__pycache__")}
        return set(names) - keep

    shutil.copytree(package, dest, ignore=not_python)
    return str(dest)


def submit(
    cfg: ExperimentConfig,
    address: str | None = None,
    *,
    tune: bool = False,
    code: str = "upload",
    tracking_uri: str | None = None,
    token: str | None = None,
    resume: str | None = None,
    overrides: list[str] | None = None,
) -> tuple[str, Any]:
    """Submit one experiment; returns ``(submission id, client)``. Everything that can be checked here
    (config, paths, tracking URI, cluster, token) is checked before the job exists."""
    address = resolve_address(address)
    check_cluster_paths(cfg, address)
    uri = job_tracking_uri(cfg.tracking.uri, address, tracking_uri)
    client = jobs_client(address, token)
    sub_id = f"moco-{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    with tempfile.TemporaryDirectory(prefix="moco-job-") as tmp:
        entrypoint, env = package(
            cfg, Path(tmp) / "job", tune=tune, code=code, tracking_uri=uri, resume=resume, overrides=overrides
        )
        metadata = {
            "moco_name": cfg.name,
            "moco_command": "tune" if tune else "pretrain",
            "moco_tracking_uri": uri,
        }
        submit_job(client, sub_id, entrypoint, env, metadata)
    return sub_id, client


def submit_evaluation(
    argv: list[str],
    encoder: str,
    paths: dict[str, str | None],
    address: str | None = None,
    *,
    code: str = "upload",
    tracking_uri: str | None = None,
    gpu: bool = False,
    token: str | None = None,
) -> tuple[str, Any]:
    """Submit ``moco evaluate ARGV`` (checked by the caller) as a job; its driver runs on a node with
    a GPU when ``gpu``. ``paths`` (``--data``, ``--splits-dir``, ``--store``, the encoder folder) must be
    paths every node sees. Returns ``(submission id, client)``."""
    address = resolve_address(address)
    for flag, value in paths.items():
        refuse_relative(f"{flag} ", value, f"{flag} ")
    uri = job_tracking_uri(None, address, tracking_uri)
    client = jobs_client(address, token)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", encoder).strip("-")[:60] or "encoder"
    sub_id = f"moco-evaluate-{name}-{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    with tempfile.TemporaryDirectory(prefix="moco-job-") as tmp:
        folder = Path(tmp) / "job"
        folder.mkdir(parents=True)
        entrypoint = shlex.join(["python", "-m", "service.cli", "evaluate", *argv, "--tracking-uri", uri])
        metadata = {"moco_name": encoder, "moco_command": "evaluate", "moco_tracking_uri": uri}
        submit_job(client, sub_id, entrypoint, runtime_env(folder, code, uri), metadata, gpus=1 if gpu else 0)
    return sub_id, client


def submit_job(client: Any, sub_id: str, entrypoint: str, env: dict, metadata: dict, gpus: int = 0) -> None:
    """Hand the job to the cluster; with ``gpus`` its driver waits for a node that has them."""
    call(
        client,
        "submit",
        lambda: client.submit_job(
            entrypoint=entrypoint,
            runtime_env=env,
            metadata=metadata,
            submission_id=sub_id,
            **({"entrypoint_num_gpus": gpus} if gpus else {}),
        ),
    )


__all__ = [
    "submit",
    "submit_evaluation",
    "submit_job",
    "runtime_env",
    "package",
    "python_sources",
    "job_tracking_uri",
    "check_cluster_paths",
    "CONFIG_FILE",
]
