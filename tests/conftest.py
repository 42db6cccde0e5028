"""Shared fixtures: the digits dataset written once, a real S3 server on 127.0.0.1, one real local Ray
cluster per session, and one digits run through Ray Train that the learning, tracking and evaluation
tests share."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from moco_core.config import ExperimentConfig, load_config

REPO = Path(__file__).resolve().parents[1]

# The session's Ray cluster (``ray_cluster``) lives only for the test session, on this machine. Without
# token auth its clients need no token, so tests that point RAY_AUTH_TOKEN* or HOME elsewhere
# (tests/test_jobs.py, with its own token-protected head) cannot cut the session's own connection off.
# Ray reads the mode once, when it is first imported, which may be in any test (an in-process
# ``moco`` command chooses ``token`` for its own local cluster unless the mode is set): set it here.
os.environ["RAY_AUTH_MODE"] = "disabled"


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    from moco_core.digits import write_digits

    root = tmp_path_factory.mktemp("digits") / "digits"
    write_digits(root)
    return root


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """moto's S3 server (the S3 REST API) on 127.0.0.1, reached as users reach theirs: through the
    ``AWS_*`` variables of the environment, which the session's Ray cluster inherits."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("s3") / "moto.log", "wb")  # noqa: SIM115 - open for the session
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except urllib.error.HTTPError:
            break  # it answers
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError(f"moto's S3 server did not start on {url}") from None
            time.sleep(0.2)
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    os.environ.update(env)
    yield url
    server.kill()
    server.wait(timeout=30)
    log.close()


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint):
    """A real local Ray cluster with 2 CPUs (the CI machine's size); its processes see the session's
    S3 server as a cluster's nodes see their object store (the environment)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # RAY_AUTH_MODE is "disabled" (set when this file was imported, above)
    ray.init(num_cpus=2, dashboard_host="127.0.0.1", logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()


# experiments/digits.yaml through Ray Train on 2 gloo workers for 8 epochs (10 in the recipe), the store
# prepared on first use, the monitor at the end only. Gains of its encoder over the random init with 5 %
# of the labels (moco evaluate, run.seed 0, 1, 2): see MARGIN in tests/test_evaluate.py.
DIGITS_RUN = (
    "scaling.workers=2",
    "optim.epochs=8",
    "data.prepare=auto",
    "eval.knn_every_epochs=0",
)


@pytest.fixture(scope="session")
def digits_run(ray_cluster, digits_root, tmp_path_factory) -> SimpleNamespace:
    """One pretraining run of DIGITS_RUN (its own MLflow store and run folder), and its trained
    encoder: what the 2-gloo test checks of training and tracking, and what the evaluation tests
    evaluate. Nothing may change its run or its registered model."""
    from moco_core.checkpoint import backbone_from_checkpoint, load_checkpoint
    from service.pretrain import pretrain

    tmp = tmp_path_factory.mktemp("digits-run")
    cfg = small_config(digits_root, tmp, *DIGITS_RUN)
    result = pretrain(cfg)  # the workers check at the end that every rank's queue is rank 0's
    trained = backbone_from_checkpoint(cfg, load_checkpoint(result.published_checkpoint_path))
    return SimpleNamespace(
        cfg=cfg, result=result, uri=result.tracking_uri, root=digits_root, tmp=tmp, trained=trained
    )


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
    if "mlflow" in sys.modules:  # a test's mlflow.set_tracking_uri stays global (and comes back as the
        sys.modules["mlflow"].set_tracking_uri(None)  # env var when the fluent URI is restored): reset
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
