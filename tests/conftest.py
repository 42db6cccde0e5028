"""Shared fixtures: the digits dataset written once, and one real local Ray cluster per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from moco_core.config import ExperimentConfig, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    from moco_core.digits import write_digits

    root = tmp_path_factory.mktemp("digits") / "digits"
    write_digits(root)
    return root


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster with 2 CPUs (the CI machine's size)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # This cluster lives only for the test session, on this machine. Without token auth its clients
    # need no token, so tests that point RAY_AUTH_TOKEN* or HOME elsewhere (tests/test_jobs.py, with
    # its own token-protected head) cannot cut the session's own connection off.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, dashboard_host="127.0.0.1", logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()


def small_config(root: Path, tmp_path: Path, *overrides: str) -> ExperimentConfig:
    """experiments/digits.yaml, shrunk to run in tens of seconds on 2 cores."""
    return load_config(
        REPO / "experiments" / "digits.yaml",
        [
            f"data.root={root}",
            "data.num_workers=0",
            f"run.storage_path={tmp_path / 'runs'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            *overrides,
        ],
    )


def val_knn(cfg: ExperimentConfig, backbone: torch.nn.Module, fraction: float = 1.0) -> float:
    """What the kNN monitor of a run reports, with ``eval.knn_label_fraction = fraction``. With few labels
    (0.05: about 5 per digit) is where pretraining shows (docs/evaluate.md)."""
    from moco_core.data import read_dataset
    from moco_core.monitor import KnnMonitor

    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"knn_label_fraction": fraction})})
    parts = read_dataset(cfg.data.root, cfg.data.splits_dir, cfg.data.label_columns, ("train", "val"), False)
    (value,) = KnnMonitor(cfg, parts).measure(backbone).values()
    return value


@pytest.fixture(autouse=True)
def _no_outside_endpoints(monkeypatch):
    """Tests choose their own tracking store and cluster."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
