"""Pretraining through Ray Train on a real local cluster, tracked in a real MLflow store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch.nn import functional as F

from moco_core.augment import BatchViews, normalization, recipe
from moco_core.backbones import backbone_for
from moco_core.checkpoint import backbone_from_checkpoint, load_checkpoint
from moco_core.config import ConfigError
from moco_core.data import DataError, read_dataset
from moco_core.model import build_moco
from moco_core.monitor import scored_as
from moco_core.pipeline import PretrainSamples, ShardSampler
from moco_core.store import images_of
from service import registry
from service.pretrain import PretrainError, pretrain
from service.records import RunRecord
from service.tracking import TrackingError

from .conftest import REPO, small_config, val_knn

pytestmark = pytest.mark.slow


def _steps(uri: str, run_id: str, key: str = "train/loss") -> list[int]:
    return [m.step for m in MlflowClient(uri).get_metric_history(run_id, key)]


@torch.no_grad()
def _heldout_infonce(cfg, model_state) -> float:
    """InfoNCE of two augmented views of every val image against the other images' keys."""
    model = build_moco(cfg)
    model.load_state_dict(model_state)
    model.train()  # batch statistics, as in training; q and k batches are normalised separately
    val = read_dataset(cfg.data.root, partitions=("val",))["val"]
    r = recipe(cfg.augment.recipe, cfg.data.image_size, cfg.data.channels)
    samples = PretrainSamples(images_of(cfg.data, val), r, seed=7)
    images, pq, pk = (torch.stack(t) for t in zip(*(samples[(i, 0)][:3] for i in range(len(val)))))
    views = BatchViews(r, *normalization(cfg.data.channels, cfg.data.normalization))
    q = F.normalize(model.encoder_q(views(images, pq)), dim=1)  # N x C
    k = F.normalize(model.encoder_q(views(images, pk)), dim=1)  # N x C
    logits = q @ k.t() / cfg.moco.temperature  # N x N, positives on the diagonal
    return float(F.cross_entropy(logits, torch.arange(len(val))))


def test_two_gloo_workers_learn_track_and_register(digits_run):
    # the session's digits run (conftest.DIGITS_RUN): the store is prepared on first use (Ray tasks),
    # then read by both workers, which check at the end that every rank's queue is rank 0's
    cfg, result = digits_run.cfg, digits_run.result
    (store,) = (digits_run.tmp / "runs" / "stores").iterdir()
    assert (store / "store.json").is_file() and MlflowClient(result.tracking_uri).get_run(
        result.mlflow_run_id
    ).data.params["data.store"] == str(store)

    uri, run_id = result.tracking_uri, result.mlflow_run_id
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["moco.temperature"] == "0.1" and run.data.params["scaling.workers"] == "2"
    steps = _steps(uri, run_id)
    n = 8 * (1078 // 64)
    assert steps == list(range(1, n + 1))  # every step once: no gap, no duplicate
    for key in ("train/lr", "train/momentum", "train/images_per_s", "train/pos_logit", "train/neg_logit"):
        assert key in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "encoder"} <= artifacts and "plots" not in artifacts  # the UI draws the curves

    # learning: the contrastive loss on held-out images falls, and kNN with few labels beats a
    # random-init encoder. (The training loss itself rises at first, as the random initial queue fills
    # with real keys.)
    final = load_checkpoint(result.published_checkpoint_path)  # the monitor's best epoch
    trained_loss, random_loss = (
        _heldout_infonce(cfg, final["model"]),
        _heldout_infonce(cfg, build_moco(cfg).state_dict()),
    )
    trained = backbone_from_checkpoint(cfg, final)
    torch.manual_seed(cfg.run.seed)
    random_init = backbone_for(cfg)
    trained_knn, random_knn = val_knn(cfg, trained, 0.05), val_knn(cfg, random_init, 0.05)
    print(
        f"held-out InfoNCE {trained_loss:.4f} vs random init {random_loss:.4f}; "
        f"kNN (5 % of the labels) {trained_knn:.4f} vs random init {random_knn:.4f}"
    )
    assert trained_loss < random_loss
    assert trained_knn > random_knn + 0.03
    assert 0 < result.metrics["eval/knn_top1"] <= 1  # the monitor (all labels) was reported

    # registry: version 1, champion alias, pulled weights give the training-time features
    assert result.registered["version"] == 1 and result.registered["champion"]
    import mlflow

    mlflow.set_tracking_uri(uri)
    pulled = registry.load_encoder("models:/moco-digits@champion", uri=uri)
    x = torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(pulled(x), trained(x), atol=1e-6)


def _checkpoint_registered(runs: Path, name: str) -> bool:
    """Ray Train has registered checkpoint ``name`` (its folder alone may still be uploading)."""
    return any(name in p.read_text() for p in runs.glob("*/checkpoint_manager_snapshot.json"))


def _kill_when_checkpointed(runs: Path, name: str, kill) -> threading.Thread:
    def watch():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if _checkpoint_registered(runs, name):
                kill()
                return
            time.sleep(0.2)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_killed_worker_is_replaced_and_resumes_from_checkpoint(ray_cluster, digits_root, tmp_path):
    import psutil

    cfg = small_config(
        digits_root,
        tmp_path,
        "scaling.workers=2",
        "optim.batch_size=32",
        "optim.epochs=3",
        "run.max_steps_per_epoch=4",
        "moco.queue_size=100",
        "run.max_failures=2",
    )
    killed = []

    def kill_rank1_worker():
        workers = [
            p
            for p in psutil.process_iter(["cmdline"])
            if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])
        ]
        victim = sorted(workers, key=lambda p: p.pid)[-1]
        os.kill(victim.pid, signal.SIGKILL)  # for real, mid-training
        killed.append(victim.pid)

    _kill_when_checkpointed(tmp_path / "runs", "epoch_00001", kill_rank1_worker)
    result = pretrain(cfg)
    assert killed, "no worker was killed"
    state = load_checkpoint(result.checkpoint_path)
    assert state["step"] == 12 and state["epoch"] == 3
    assert int(state["model"]["queue.ptr"]) == (12 * 32) % 100  # the queue continued from the checkpoint
    steps = _steps(result.tracking_uri, result.mlflow_run_id)
    assert steps == list(range(1, 13))  # no gap and no duplicate across the restart
    resumed = _steps(result.tracking_uri, result.mlflow_run_id, "train/resumed_at_step")
    assert resumed and all(s in (4, 8) for s in resumed)  # restarted from an epoch checkpoint


def test_resume_after_driver_crash_equals_uninterrupted_run(ray_cluster, digits_root, tmp_path):
    common = (
        "optim.batch_size=32",
        "optim.epochs=4",  # killed after epoch 1: three epochs left to train, never only the publishing
        "run.max_steps_per_epoch=3",
        "moco.queue_size=50",
        "eval.knn_every_epochs=0",
    )
    b = tmp_path / "b"
    b.mkdir()
    cfg_b = small_config(digits_root, b, *common)
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.get_runtime_context().gcs_address, PYTHONUNBUFFERED="1")
    args = ["pretrain", str(REPO / "experiments" / "digits.yaml")]
    for o in (
        f"data.root={digits_root}",
        "data.num_workers=0",
        f"run.storage_path={b / 'runs'}",
        f"tracking.uri=sqlite:///{b / 'mlflow.db'}",
        *common,
    ):
        args += ["--set", o]
    driver = subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args],
        env=env,
        cwd=b.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    alive_when_killed = []

    def kill_driver():
        alive_when_killed.append(driver.poll() is None)
        driver.send_signal(signal.SIGKILL)  # the driver dies mid-run

    killer = _kill_when_checkpointed(b / "runs", "epoch_00001", kill_driver)
    # meanwhile, the uninterrupted reference run, on the same cluster (one CPU each)
    (tmp_path / "a").mkdir()
    reference = pretrain(small_config(digits_root, tmp_path / "a", *common))
    killer.join(timeout=300)
    assert alive_when_killed == [True], driver.stdout.read().decode()[-3000:]
    driver.wait(timeout=60)
    record = RunRecord.load(next((b / "runs").glob("*/moco_run.json")).parent)
    assert record.status == "running" and record.trained is None  # killed while it trained
    time.sleep(2)  # let Ray reap the dead driver's actors

    resumed = pretrain(cfg_b, resume=True)
    assert resumed.run_name == record.name and resumed.mlflow_run_id == record.mlflow_run_id
    ref_state = load_checkpoint(reference.checkpoint_path)
    res_state = load_checkpoint(resumed.checkpoint_path)
    assert res_state["step"] == ref_state["step"] == 12
    assert int(res_state["model"]["queue.ptr"]) == int(ref_state["model"]["queue.ptr"])
    assert resumed.metrics["train/loss"] == pytest.approx(reference.metrics["train/loss"], rel=1e-4)
    assert torch.allclose(res_state["model"]["queue.keys"], ref_state["model"]["queue.keys"], atol=1e-4)
    assert _steps(resumed.tracking_uri, resumed.mlflow_run_id) == list(range(1, 13))
    assert MlflowClient(resumed.tracking_uri).get_run(resumed.mlflow_run_id).info.status == "FINISHED"
    with pytest.raises(PretrainError, match="nothing to resume"):
        pretrain(cfg_b, resume=True)  # finished runs are not resumed again


def _printer():
    import io

    from service.progress import ProgressPrinter

    stream = io.StringIO()
    return ProgressPrinter(stream), stream


def test_non_finite_loss_stops_at_once_with_clear_error_and_keeps_checkpoint(
    ray_cluster, digits_root, tmp_path
):
    cfg = small_config(
        digits_root,
        tmp_path,
        "optim.lr=1.0e+30",
        "optim.batch_size=16",
        "optim.epochs=3",
        "run.max_steps_per_epoch=1",
        "run.max_failures=2",  # a fault of the run itself: not retried
        "eval.knn_every_epochs=0",
        "moco.split_bn_groups=2",
    )
    printer, out = _printer()
    with pytest.raises(PretrainError, match="non-finite loss") as err:
        pretrain(cfg, printer=printer)
    assert "--resume" in str(err.value)
    assert "starting again" not in out.getvalue()  # no retry
    assert list((tmp_path / "runs").glob("*/epoch_00001/state.pt"))  # the last good checkpoint stays


def test_unreadable_image_found_by_a_worker_ends_the_run_at_once(ray_cluster, digits_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(digits_root, root)
    cfg = small_config(root, tmp_path, "run.max_failures=2", "optim.epochs=1", "run.max_steps_per_epoch=1")
    train = read_dataset(root, partitions=("train",))["train"]
    first, _ = next(iter(ShardSampler(len(train), seed=cfg.run.seed)))  # in the first batch
    victim = train.paths[first]
    victim.write_bytes(victim.read_bytes()[:40])  # exists (the driver's check passes), cannot be decoded
    printer, out = _printer()
    t0 = time.monotonic()
    with pytest.raises(PretrainError, match=victim.name) as err:
        pretrain(cfg, printer=printer)
    assert "unreadable image" in str(err.value) and "train.csv line" in str(err.value)
    assert "starting again" not in out.getvalue()
    print(f"failed after {time.monotonic() - t0:.1f} s")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["scaling.use_gpu=true"],
            r"scaling.use_gpu=true\).*local Ray cluster: it has 1 node\(s\) with 2 CPUs and "
            r"no GPU; set scaling.use_gpu=false",
        ),
        (
            ["scaling.workers=2", "scaling.cpus_per_worker=2"],
            r"2 workers of 2 CPU each .* lower scaling.workers",
        ),
    ],
)
def test_a_run_the_local_cluster_cannot_hold_fails_before_ray_train(
    ray_cluster, digits_root, tmp_path, overrides, message
):
    from service.ray_cluster import ResourcesError

    cfg = small_config(digits_root, tmp_path, *overrides)
    t0 = time.monotonic()
    with pytest.raises(ResourcesError, match=message):
        pretrain(cfg)
    assert time.monotonic() - t0 < 60  # no wait on a local cluster (Ray Train would wait forever)
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_a_cluster_named_by_an_address_is_waited_for_a_bounded_time(ray_cluster):
    """A cluster named by an address may add nodes: its run waits scaling.wait_for_resources_s for
    room, then fails with what the cluster has; one that has room does not wait."""
    from moco_core.config.sections import ScalingConfig
    from service.ray_cluster import ResourcesError, check_resources

    t0 = time.monotonic()
    with pytest.raises(
        ResourcesError,
        match=r"do not fit the Ray cluster after waiting 2 s: it has 1 node\(s\) with 2 CPUs and no GPU; "
        r"set scaling.use_gpu=false",
    ):
        check_resources(ScalingConfig(workers=1, use_gpu=True, wait_for_resources_s=2), remote=True)
    assert 2 <= time.monotonic() - t0 < 30
    t0 = time.monotonic()
    check_resources(ScalingConfig(workers=2, wait_for_resources_s=60), remote=True)
    assert time.monotonic() - t0 < 5


def test_dataset_fault_stops_before_ray(digits_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(digits_root, root)
    victim = next((root / "train").rglob("*.png"))
    victim.unlink()
    cfg = small_config(root, tmp_path)
    with pytest.raises(DataError, match=victim.name):
        pretrain(cfg)
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_monitor_label_fraction_that_empties_a_class_fails_before_training(digits_root, tmp_path):
    cfg = small_config(digits_root, tmp_path, "eval.knn_label_fraction=0.001")
    with pytest.raises(
        ConfigError, match=r"eval\.knn_label_fraction=0\.001: .* leaves class '\d' with no example"
    ):
        pretrain(cfg)
    assert not (tmp_path / "runs").exists()


def test_scores_with_a_label_fraction_are_registered_under_their_own_name(digits_root, tmp_path):
    few = small_config(digits_root, tmp_path, "eval.knn_label_fraction=0.05")
    every = small_config(digits_root, tmp_path, "eval.knn_label_fraction=1")
    assert scored_as(few, "eval/knn_top1") == "eval/knn_top1@0.05"  # never compared with all-label kNN
    assert scored_as(every, "eval/knn_top1") == "eval/knn_top1"
    assert scored_as(few, "train/neg_loss") == "train/neg_loss"


def test_unreachable_mlflow_fails_before_training(digits_root, tmp_path):
    cfg = small_config(digits_root, tmp_path, "tracking.uri=http://127.0.0.1:9")
    with pytest.raises(TrackingError, match="127.0.0.1:9"):
        pretrain(cfg)
    assert not (tmp_path / "runs").exists()


def test_checkpoints_within_an_epoch(ray_cluster, digits_root, tmp_path):
    cfg = small_config(
        digits_root,
        tmp_path,
        "optim.epochs=1",
        "run.max_steps_per_epoch=5",
        "run.checkpoint_every_steps=2",
        "eval.knn_every_epochs=0",
    )
    result = pretrain(cfg)
    names = sorted(p.parent.name for p in (tmp_path / "runs").glob("*/*/state.pt"))
    assert names == ["epoch_00001", "step_000000004"]  # steps 2 and 4 within the epoch; 2 are kept
    assert load_checkpoint(Path(result.checkpoint_path))["step"] == 5
    assert _steps(result.tracking_uri, result.mlflow_run_id) == [1, 2, 3, 4, 5]
