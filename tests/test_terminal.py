"""``moco pretrain`` as a user starts it (its own local Ray cluster and MLflow store), once for the
module: the terminal shows our lines and every warning and none of the other tools' informational
lines; the encoder published is the monitor's best epoch, with its lineage and the workers' system
metrics in MLflow."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from mlflow.tracking import MlflowClient

from moco_core.checkpoint import backbone_from_checkpoint, load_checkpoint
from moco_core.config import load_config
from moco_core.data import dataset_fingerprint, read_dataset
from service import registry

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


@pytest.fixture(scope="module")
def run(digits_root, tmp_path_factory):
    """3 epochs whose learning rate warms up to far too much and stays there (constant, not decayed:
    a cosine's end let the last epoch recover, and which epoch won then turned on float rounding):
    epoch 1's features are the monitor's best (measured: kNN 0.713, 0.582, 0.577; seed 0 gives 0.713,
    0.671, 0.708, too close to rely on). A training worker asks for more loader processes than it
    holds CPUs: that warning is planted."""
    tmp = tmp_path_factory.mktemp("terminal")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    (tmp / "home").mkdir()
    env.update(HOME=str(tmp / "home"), RAY_USAGE_STATS_ENABLED="0")  # its own Ray token
    sets = [f"data.root={digits_root}", "optim.epochs=3", "optim.warmup_epochs=2", "optim.lr=3.0"]
    sets += ["optim.schedule=constant", "run.seed=1"]
    sets += ["run.max_steps_per_epoch=8", "eval.knn_label_fraction=1.0"]
    sets += ["tracking.system_metrics=true", "tracking.system_metrics_every_s=1"]
    sets += ["data.num_workers=2", "scaling.cpus_per_worker=1"]  # the planted warning
    sets += [f"run.storage_path={tmp / 'runs'}", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}"]
    recipe = REPO / "experiments" / "digits.yaml"
    cmd = [sys.executable, "-m", "service.cli", "pretrain", str(recipe)]
    for s in sets:
        cmd += ["--set", s]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=280, env=env, cwd=tmp)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    return SimpleNamespace(out=out, cfg=load_config(recipe, sets), uri=f"sqlite:///{tmp / 'mlflow.db'}")


@pytest.mark.timeout(300)
def test_the_terminal_shows_our_lines_and_a_workers_warning_and_no_other_tools_chatter(run):
    shown = [n for n in NOISE if n in run.out]
    assert not shown, f"other tools' lines on the terminal: {shown}\n{run.out}"
    assert "data.num_workers=2 but this worker holds 1 CPU" in run.out  # a worker's warning reaches it
    assert "run digits-" in run.out and "epoch 3/3" in run.out and "registered" in run.out
    assert "pull:" in run.out


@pytest.mark.timeout(300)
def test_the_best_epoch_is_published_with_its_lineage_and_system_metrics(run, digits_root):
    client = MlflowClient(run.uri)
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("moco").experiment_id])
    history = client.get_metric_history(mlflow_run.info.run_id, "eval/knn_top1")
    knn = list({m.step: m.value for m in history}.values())  # by epoch (the model's link: a repeat)
    assert len(knn) == 3 and max(knn) > knn[-1]  # the last epoch is worse
    best = knn.index(max(knn)) + 1
    published = re.search(r"published encoder\s+epoch (\d+) \(the monitor's best\): (\S+)", run.out)
    assert published and int(published[1]) == best
    assert load_checkpoint(published[2])["epoch"] == best
    last = re.search(r"checkpoint\s+(\S+)", run.out)
    assert load_checkpoint(last[1])["epoch"] == 3  # the last is kept too (to resume)

    (found,) = client.search_model_versions("name='moco-digits'")
    version = client.get_model_version("moco-digits", found.version)
    assert version.tags["moco.epoch"] == str(best) and version.tags["moco.published"] == "best"
    assert float(version.tags["moco.value"]) == pytest.approx(max(knn))
    pulled = registry.load_encoder("models:/moco-digits@champion", uri=run.uri)
    expected = backbone_from_checkpoint(run.cfg, load_checkpoint(published[2]))
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(pulled(x), expected(x), atol=1e-6)

    # lineage: the training data is the run's dataset input; the published metrics are the model's
    (data,) = mlflow_run.inputs.dataset_inputs
    fingerprint = dataset_fingerprint(read_dataset(digits_root)["train"])
    assert (data.dataset.name, data.dataset.digest) == ("digits", fingerprint)
    assert json.loads(data.dataset.source)["uri"] == str(digits_root)
    assert {t.key: t.value for t in data.tags}["mlflow.data.context"] == "train"
    model = client.get_logged_model(version.source.removeprefix("models:/"))  # the version's LoggedModel
    (linked,) = [m for m in model.metrics if m.key == "eval/knn_top1"]
    assert linked.value == pytest.approx(max(knn)) and linked.dataset_digest == fingerprint

    # MLflow's own system-metrics monitor, per worker
    metrics = set(mlflow_run.data.metrics)
    assert {
        "system/worker_0/cpu_utilization_percentage",
        "system/worker_0/system_memory_usage_megabytes",
    } <= metrics
