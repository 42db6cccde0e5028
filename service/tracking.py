"""The project's one MLflow convention: a tracking URI resolved once, then an explicit client of it.

Every function that talks to MLflow takes the URI (or a client made by :func:`client`); nothing reads
or sets MLflow's global tracking URI, except :func:`fluent_uri` around the one fluent call MLflow has no
client form of. Only the driver and the rank-0 worker talk to MLflow: one run per training run (a sweep
is a parent run with a child per trial), the whole config as params and ``config.yaml``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from moco_core.config import ExperimentConfig, dump_yaml, tracking_uri_problem
from moco_core.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_URI_FILE = "mlflow.db"
MAX_PARAM_LEN = 6000


class TrackingError(UserError, RuntimeError):
    """MLflow cannot be used; the message names the URI."""


def resolve_tracking_uri(cfg_uri: str | None, cwd: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI``, else the config's ``tracking.uri``, else ``sqlite:///mlflow.db`` in ``cwd``.

    Local URIs (sqlite, plain paths) are made absolute, because Ray workers run in other directories.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    uri = env or cfg_uri or f"sqlite:///{DEFAULT_URI_FILE}"
    if problem := tracking_uri_problem(uri):
        raise TrackingError(f"{'MLFLOW_TRACKING_URI' if env else 'tracking.uri'} {problem}")
    base = Path(cwd or os.getcwd())
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if not path.startswith("/"):
            return f"sqlite:///{(base / path).resolve()}"
        return uri
    if "://" not in uri:  # a plain folder (file store)
        return (base / uri).resolve().as_uri()
    return uri


def client(uri: str) -> MlflowClient:
    """A client of the store at ``uri`` (tracking and model registry alike)."""
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def mlflow_errors() -> tuple[type[BaseException], ...]:
    """What the MLflow client raises when the store answers "no such object"."""
    return (MlflowException,)


def store_errors() -> tuple[type[BaseException], ...]:
    """What a lookup or download that finds nothing raises: MlflowException or OSError, by store."""
    return (MlflowException, OSError)


@contextlib.contextmanager
def fluent_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API (``mlflow.pytorch.log_model``) reads the global tracking URI: point it at
    ``uri`` for the block, then back to what it was: unset when it was unset (setting it also sets
    ``MLFLOW_TRACKING_URI``, which would then outrank every URI this process is given)."""
    import mlflow

    previous = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def is_local_uri(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, naming ``uri``, when the tracking store cannot be used."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
                if r.status != 200:
                    raise TrackingError(f"MLflow tracking server {uri} answered {r.status} on /health")
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):  # auth-protected server: reachable; credentials are checked next
                pass
            else:
                raise TrackingError(
                    f"MLflow tracking server {uri} answered HTTP {e.code} on /health"
                ) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable ({reason}); start it, or set "
                "MLFLOW_TRACKING_URI / tracking.uri to a reachable server"
            ) from None
    elif uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.parent.is_dir():
            raise TrackingError(f"MLflow tracking URI {uri}: folder {path.parent} does not exist")
        # A new store is made where it is first written, not by this check: a command refused after
        # it leaves no empty store behind.
        if not path.exists():
            if not os.access(path.parent, os.W_OK):
                raise TrackingError(f"MLflow tracking URI {uri}: folder {path.parent} is not writable")
            return
    try:
        client(uri).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any store failure is reported with the URI, then re-raised
        if problem := _credentials_problem(uri, e):
            raise TrackingError(problem) from None
        raise TrackingError(f"MLflow tracking URI {uri} cannot be used: {type(e).__name__}: {e}") from e


def _credentials_problem(uri: str, e: BaseException) -> str | None:
    """What to do when an auth-protected server (``mlflow server --app-name basic-auth``) refused the
    request: 401 (no or wrong user and password) or 403 (a user without permission); else None."""
    code = getattr(e, "error_code", None)
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if code == "UNAUTHENTICATED":
        if user and os.environ.get("MLFLOW_TRACKING_PASSWORD"):
            return (
                f"MLflow tracking server {uri} refused user '{user}' and the password of "
                "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (HTTP 401): check them"
            )
        return (
            f"MLflow tracking server {uri} needs a user and password (HTTP 401): set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    if code == "PERMISSION_DENIED":
        return f"MLflow tracking server {uri}: user '{user}' may not read its experiments (HTTP 403)"
    return None


def default_artifact_location(uri: str) -> str | None:
    """Beside a local sqlite store, artifacts go to ``mlruns/`` next to the database file (where
    ``mlflow ui`` run in that folder finds them), not into whatever folder the run started from."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlruns").as_uri()
    return None  # a tracking server decides


def _param_value(v: Any) -> str:
    s = "" if v is None else str(v)
    return s if len(s) <= MAX_PARAM_LEN else s[: MAX_PARAM_LEN - 3] + "..."


def start_run(
    uri: str,
    cfg: ExperimentConfig,
    run_name: str,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Create the MLflow run of a training run: the whole config as params and ``config.yaml``."""
    store = client(uri)
    exp = store.get_experiment_by_name(cfg.tracking.experiment)
    exp_id = (
        exp.experiment_id
        if exp
        else store.create_experiment(
            cfg.tracking.experiment, artifact_location=default_artifact_location(uri)
        )
    )
    all_tags = {"mlflow.runName": run_name, "moco.name": cfg.name, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = store.create_run(exp_id, run_name=run_name, tags=all_tags)
    run_id = run.info.run_id
    flat = {**cfg.flat(), "moco.effective_k": cfg.negatives}  # end_to_end: tied to the batch
    params = [Param(k, _param_value(v)) for k, v in sorted(flat.items())]
    for i in range(0, len(params), 100):
        store.log_batch(run_id, params=params[i : i + 100])
    store.log_text(run_id, dump_yaml(cfg), "config.yaml")
    return run_id


def set_status(uri: str, run_id: str, status: str) -> None:
    """``RUNNING``, ``FINISHED``, ``FAILED`` or ``KILLED``."""
    store = client(uri)
    if status == "RUNNING":
        store.update_run(run_id, status="RUNNING")
    else:
        store.set_terminated(run_id, status=status)


__all__ = [
    "TrackingError",
    "resolve_tracking_uri",
    "client",
    "mlflow_errors",
    "store_errors",
    "fluent_uri",
    "is_local_uri",
    "check_reachable",
    "default_artifact_location",
    "start_run",
    "set_status",
]
