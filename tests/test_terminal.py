"""The terminal of a run shows our lines (progress, results, where to look) and every warning, and
none of the other tools' informational lines unless asked (``moco -v``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow

# what Ray, Ray Train and MLflow print by themselves on a run's first screen (and at its end)
NOISE = [
    "Creating initial MLflow database tables",
    "mlflow.store.db.utils",
    "Token authentication is enabled",
    "Requesting resources",
    "Attempting to start training worker group",
    "Started training worker group",
    "world_rank=",
    "Setting up process group",
    "Reporting training result",
    "PreemptionWatcher",
    "issues/53727",
    "Successfully registered model",
    "Created version",
    "Downloading artifacts",
    "DataLoader will create",
]


@pytest.mark.timeout(300)
def test_a_run_shows_our_lines_and_a_workers_warning_and_no_other_tools_chatter(digits_root, tmp_path):
    """``moco pretrain`` as a user starts it: its own local Ray cluster and MLflow store. A training
    worker asked for more loader processes than it holds CPUs: that warning is planted, and shows."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    (tmp_path / "home").mkdir()
    env.update(HOME=str(tmp_path / "home"), RAY_USAGE_STATS_ENABLED="0")  # its own Ray token
    sets = [f"data.root={digits_root}", "optim.epochs=1", "run.max_steps_per_epoch=3"]
    sets += ["data.num_workers=2", "scaling.cpus_per_worker=1"]  # the planted warning
    sets += [f"run.storage_path={tmp_path / 'runs'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    cmd = [sys.executable, "-m", "service.cli", "pretrain", str(REPO / "experiments" / "digits.yaml")]
    for s in sets:
        cmd += ["--set", s]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=280, env=env, cwd=tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    shown = [n for n in NOISE if n in out]
    assert not shown, f"other tools' lines on the terminal: {shown}\n{out}"
    assert "data.num_workers=2 but this worker holds 1 CPU" in out  # a worker's warning reaches it
    assert "run digits-" in out and "epoch 1/1" in out and "registered" in out and "pull:" in out
