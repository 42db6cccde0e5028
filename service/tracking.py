"""MLflow tracking: URI resolution, one run per training run, params, metrics with retry, plots.

Only the driver and the rank-0 worker talk to MLflow. Metrics are buffered and sent in batches; a
failed send keeps the buffer and is retried at the next flush, so an MLflow outage mid-run costs
no metric. A restarted worker skips the steps the run already has, so a run resumed from a
checkpoint has neither gaps nor duplicate steps.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from moco_core.config import ExperimentConfig, dump_yaml

log = logging.getLogger(__name__)

DEFAULT_URI_FILE = "mlflow.db"
MAX_PARAM_LEN = 6000


class TrackingError(RuntimeError):
    """MLflow cannot be used; the message names the URI."""


def resolve_tracking_uri(cfg_uri: str | None, cwd: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI``, else the config's ``tracking.uri``, else ``sqlite:///mlflow.db`` in ``cwd``.

    Local URIs (sqlite, plain paths) are made absolute, because Ray workers run in other directories.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg_uri or f"sqlite:///{DEFAULT_URI_FILE}"
    base = Path(cwd or os.getcwd())
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if not path.startswith("/"):
            return f"sqlite:///{(base / path).resolve()}"
        return uri
    if "://" not in uri:  # a plain folder (file store)
        return (base / uri).resolve().as_uri()
    return uri


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
                raise TrackingError(f"MLflow tracking server {uri} answered HTTP {e.code} on /health") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable ({reason}); start it, or set "
                "MLFLOW_TRACKING_URI / tracking.uri to a reachable server"
            ) from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///") :]).parent
        if not folder.is_dir():
            raise TrackingError(f"MLflow tracking URI {uri}: folder {folder} does not exist")
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any store failure is reported with the URI, then re-raised
        raise TrackingError(f"MLflow tracking URI {uri} cannot be used: {type(e).__name__}: {e}") from e


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
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        cfg.tracking.experiment, artifact_location=default_artifact_location(uri)
    )
    all_tags = {"mlflow.runName": run_name, "moco.name": cfg.name, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    run_id = run.info.run_id
    params = [Param(k, _param_value(v)) for k, v in sorted(cfg.flat().items())]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])
    client.log_text(run_id, dump_yaml(cfg), "config.yaml")
    return run_id


def set_status(uri: str, run_id: str, status: str) -> None:
    """``RUNNING``, ``FINISHED``, ``FAILED`` or ``KILLED``."""
    client = MlflowClient(uri)
    if status == "RUNNING":
        client.update_run(run_id, status="RUNNING")
    else:
        client.set_terminated(run_id, status=status)


class MetricLogger:
    """Buffered metric logging to one run, with retry and resume de-duplication."""

    def __init__(self, uri: str, run_id: str, flush_every_s: float = 10.0) -> None:
        self.client = MlflowClient(uri)
        self.uri, self.run_id, self.flush_every_s = uri, run_id, flush_every_s
        self.buffer: list[Metric] = []
        self.last_flush = time.monotonic()
        self.failing = False
        self.logged_upto: dict[str, int] = {}
        try:
            for key in self.client.get_run(run_id).data.metrics:
                hist = self.client.get_metric_history(run_id, key)
                self.logged_upto[key] = max((m.step for m in hist), default=-1)
        except Exception as e:  # noqa: BLE001 - unreachable now: log anyway, retried later
            log.warning("MLflow %s: could not read metric history of run %s: %s", uri, run_id, e)

    def log(self, metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        for k, v in metrics.items():
            if step <= self.logged_upto.get(k, -1):
                continue  # already in the run (logged before a restart)
            self.buffer.append(Metric(k, float(v), ts, step))
        if time.monotonic() - self.last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> bool:
        """Send the buffer; keep it on failure. Returns True when nothing is left to send."""
        self.last_flush = time.monotonic()
        while self.buffer:
            batch = self.buffer[:1000]
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception as e:  # noqa: BLE001 - keep training; metrics stay buffered
                if not self.failing:
                    log.error("MLflow %s unreachable, %d metrics kept for retry: %s", self.uri, len(self.buffer), e)
                self.failing = True
                return False
            del self.buffer[: len(batch)]
            for m in batch:
                self.logged_upto[m.key] = max(self.logged_upto.get(m.key, -1), m.step)
        if self.failing:
            log.warning("MLflow %s reachable again; buffered metrics sent", self.uri)
        self.failing = False
        return True


def log_plots(uri: str, run_id: str, out_dir: str | Path) -> list[Path]:
    """Loss, learning-rate and kNN curves as PNG artifacts under ``plots/``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    client = MlflowClient(uri)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    keys = list(client.get_run(run_id).data.metrics)
    for key, fname in [
        ("train/loss", "loss.png"),
        ("train/lr", "lr.png"),
        ("eval/knn_top1", "knn.png"),
        ("eval/knn_auroc", "knn.png"),
    ]:
        if key not in keys:
            continue
        hist = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([m.step for m in hist], [m.value for m in hist], marker="o" if len(hist) < 50 else None)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        path = out_dir / fname
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        client.log_artifact(run_id, str(path), "plots")
        written.append(path)
    return written


def run_status(uri: str, run_id: str) -> str:
    return MlflowClient(uri).get_run(run_id).info.status


__all__ = [
    "TrackingError",
    "resolve_tracking_uri",
    "is_local_uri",
    "check_reachable",
    "start_run",
    "set_status",
    "MetricLogger",
    "log_plots",
    "run_status",
]
