"""Pretraining on Ray Train (Train V2 API): the driver (`pretrain`) and the worker function.

Driver: validate config and data -> check MLflow -> create (or find, on --resume) the run -> TorchTrainer
-> fit -> encoder package -> registry. Worker: rebuild the config -> moco_core objects -> restore the
latest checkpoint if any -> ``engine.fit`` with hooks that log (rank 0), checkpoint (rank 0) and report.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moco_core.config import ExperimentConfig
from moco_core.data import Partition, dataset_fingerprint, read_dataset
from moco_core.downstream import EvaluationError, label_subset
from moco_core.engine import TrainState, build_train_state, fit
from moco_core.evaluate import extract_features, knn_metric
from moco_core.pipeline import eval_loader, pretrain_loader, queue_size_warning, steps_per_epoch

from . import storage, tracking
from .progress import ProgressPrinter, ProgressRelay, ProgressSender

log = logging.getLogger(__name__)

RUN_RECORD = "moco_run.json"
CHECKPOINT_FILE = "state.pt"


class PretrainError(RuntimeError):
    """A pretraining run could not start or finish; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------
# run records: what --resume needs to continue the same Ray run and the same MLflow run


@dataclass
class RunRecord:
    name: str  # Ray Train run name: <experiment name>-<timestamp>
    storage_path: str
    mlflow_run_id: str
    tracking_uri: str
    config: dict[str, Any]
    status: str = "running"  # running | finished | failed
    created: str = ""

    @property
    def folder(self) -> str:
        """``storage_path/name``: a local folder or a URI (``s3://...``), beside the run's checkpoints."""
        return storage.join(self.storage_path, self.name)

    def save(self) -> None:
        storage.write_text(storage.join(self.folder, RUN_RECORD), json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> RunRecord:
        return cls(**json.loads(storage.read_text(storage.join(str(folder), RUN_RECORD))))


def storage_path_of(cfg: ExperimentConfig) -> str:
    """``run.storage_path`` as given when it is a URI, else an absolute folder (default ``./runs``)."""
    sp = cfg.run.storage_path or "runs"
    if "://" in sp:
        return sp
    return str(Path(sp).expanduser().resolve())


def find_resumable(cfg: ExperimentConfig, run_name: str | None = None) -> RunRecord:
    """The named run, or the latest unfinished run of this experiment."""
    root = storage_path_of(cfg)
    if run_name:
        folder = storage.join(root, run_name)
        if not storage.exists(storage.join(folder, RUN_RECORD)):
            raise PretrainError(f"no run named {run_name!r} under {root}")
        return RunRecord.load(folder)
    candidates = []
    for name in storage.list_dirs(root):
        folder = storage.join(root, name)
        if not name.startswith(f"{cfg.name}-") or not storage.exists(storage.join(folder, RUN_RECORD)):
            continue
        rec = RunRecord.load(folder)
        if rec.status != "finished" and rec.config.get("name") == cfg.name:
            candidates.append(rec)
    if not candidates:
        raise PretrainError(
            f"nothing to resume: no unfinished run of experiment {cfg.name!r} under {root}; "
            "start a fresh run without --resume"
        )
    return max(candidates, key=lambda r: r.created)


# ---------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(state: TrainState, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT_FILE
    torch.save(state.state_dict(), path)
    return path


def load_checkpoint_dict(folder: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    return torch.load(Path(folder) / CHECKPOINT_FILE, map_location=device, weights_only=True)


# ---------------------------------------------------------------------------------------------
# the worker


def monitor_bank(cfg: ExperimentConfig, train_p: Partition) -> np.ndarray:
    """Rows of ``train_p`` whose labels the kNN monitor votes with: a stratified, seeded
    ``eval.knn_label_fraction`` of them (all by default). Raises ``PretrainError`` when the fraction
    leaves a class without an image, so a run stops before it starts."""
    try:
        return label_subset(train_p, cfg.eval.knn_label_fraction, cfg.run.seed)
    except EvaluationError as e:
        raise PretrainError(f"eval.knn_label_fraction={cfg.eval.knn_label_fraction}: {e}") from None


def check_monitor(cfg: ExperimentConfig, parts: dict[str, Partition]) -> None:
    """On the driver, before Ray starts: the kNN monitor's label fraction keeps every class."""
    if _label_kind_usable(parts):
        monitor_bank(cfg, parts["train"])


def scored_as(cfg: ExperimentConfig, metric: str) -> str:
    """The name a run's score is registered under. kNN with a fraction of the labels is another measure
    than kNN with all of them, so the champion rule must not compare the two: ``eval/knn_top1@0.05``."""
    f = cfg.eval.knn_label_fraction
    return f"{metric}@{f:g}" if metric.startswith("eval/knn_") and f < 1.0 else metric


def knn_monitor(cfg: ExperimentConfig, backbone: torch.nn.Module, loaders: dict, parts: dict,
                bank: np.ndarray, device: torch.device | str = "cpu") -> dict[str, float]:
    """The kNN monitor: ``val`` against the ``bank`` rows of ``train`` (``monitor_bank``), as
    ``{"eval/knn_top1": value}`` (``eval/knn_auroc`` for binary and multi-label)."""
    train_p, val_p = parts["train"], parts["val"]
    feats_train = extract_features(backbone, loaders["train"], device, cfg.run.channels_last)[bank]
    feats_val = extract_features(backbone, loaders["val"], device, cfg.run.channels_last)
    name, value = knn_metric(
        feats_train, train_p.targets[bank], feats_val, val_p.targets, train_p.label_kind,
        len(train_p.classes), k=cfg.eval.knn_k, t=cfg.eval.knn_t,
    )
    return {f"eval/{name}": value}


def _label_kind_usable(parts: dict[str, Partition | None]) -> bool:
    train_p, val_p = parts.get("train"), parts.get("val")
    return train_p is not None and val_p is not None and train_p.label_kind != "none" and len(val_p) > 0


def quiet_ray_train_logs() -> None:
    """Ray Train logs every report and checkpoint at INFO on each worker, and the driver echoes those
    lines; the progress line says the same. Warnings and errors still show."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("ray.train") or "/ray/train/" in name:
            logging.getLogger(name).setLevel(logging.WARNING)


def train_fn_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker. ``loop_config`` is plain data (the config as a dict)."""
    import ray.train
    import ray.train.torch

    quiet_ray_train_logs()
    cfg = ExperimentConfig.model_validate(loop_config["experiment"])  # validated again on the worker
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, cfg.scaling.cpus_per_worker))

    parts = read_partitions(cfg, check_files=False)
    train_p = parts["train"]
    loader = pretrain_loader(cfg, train_p, rank, world, pin_memory=device.type == "cuda")
    spe = steps_per_epoch(len(train_p), cfg)
    state = build_train_state(cfg, spe, world, device)
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state.load_state_dict(load_checkpoint_dict(d, device))
    forward: torch.nn.Module = state.model
    if world > 1:
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*")  # still the right knob here
        # Buffers (queue, BN statistics of encoder_k) are kept identical by construction; don't re-broadcast.
        forward = ray.train.torch.prepare_model(
            state.model, move_to_device=False, parallel_strategy_kwargs={"broadcast_buffers": False}
        )
    if cfg.run.compile:
        forward = torch.compile(forward)

    total_steps = cfg.optim.epochs * spe
    is_rank0 = rank == 0
    metrics_log = tracking.MetricLogger(loop_config["tracking_uri"], loop_config["mlflow_run_id"]) if is_rank0 else None
    progress = ProgressSender(loop_config.get("progress_queue")) if is_rank0 else None
    eval_parts: dict[str, Partition | None] = {"train": train_p, "val": parts.get("val")}
    eval_loaders: dict = {}
    if is_rank0 and _label_kind_usable(eval_parts):
        eval_loaders = {k: eval_loader(cfg.data, p) for k, p in eval_parts.items()}
        bank = monitor_bank(cfg, train_p)
    t_start, step_start = time.monotonic(), state.step
    if ckpt is not None and metrics_log is not None:  # visible in the MLflow UI: where a restart resumed
        metrics_log.log({"train/resumed_at_step": state.step}, step=state.step)

    def on_step(m: dict[str, float]) -> None:
        if metrics_log is not None:
            metrics_log.log({k: v for k, v in m.items() if k.startswith("train/")}, step=state.step)
        if progress is not None:
            done = state.step - step_start
            eta = (time.monotonic() - t_start) / max(done, 1) * (total_steps - state.step)
            progress.send({**m, "epochs": cfg.optim.epochs, "total_steps": total_steps, "eta_s": eta})

    def on_epoch_end(st: TrainState, epoch_metrics: dict[str, float]) -> None:
        report = {k: v for k, v in epoch_metrics.items() if k.startswith("train/")}
        report.update(epoch=st.epoch, step=st.step)
        final = st.epoch >= cfg.optim.epochs
        knn_due = cfg.eval.knn_every_epochs and st.epoch % cfg.eval.knn_every_epochs == 0
        if is_rank0 and eval_loaders and (knn_due or final):
            report.update(knn_monitor(cfg, st.model.encoder_q.backbone, eval_loaders, eval_parts, bank, device))
        if metrics_log is not None:
            metrics_log.log({k: v for k, v in report.items() if k.startswith("eval/")}, step=st.step)
            metrics_log.log({"train/epoch_loss": report["train/loss"]}, step=st.step)
            metrics_log.flush()  # before the checkpoint: a restart skips what is already logged
        if progress is not None:
            progress.send({**report, "kind": "epoch", "epoch": st.epoch - 1, "epochs": cfg.optim.epochs, "total_steps": total_steps},
                          force=True)
        if final or st.epoch % cfg.run.checkpoint_every_epochs == 0:
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint = None
                if is_rank0:
                    save_checkpoint(st, Path(tmp))
                    checkpoint = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(report, checkpoint=checkpoint, checkpoint_dir_name=f"epoch_{st.epoch:05d}")
        else:
            ray.train.report(report)

    state.extra["mlflow_run_id"] = loop_config["mlflow_run_id"]
    fit(state, loader, cfg, device, forward=forward, on_step=on_step, on_epoch_end=on_epoch_end, world_size=world)
    if loop_config.get("check_queues"):
        _check_queues_identical(state)
    if metrics_log is not None and not metrics_log.flush():
        log.error("some metrics could not be sent to MLflow %s", loop_config["tracking_uri"])


def _check_queues_identical(state: TrainState) -> None:
    """Debug/test hook: every rank's queue equals rank 0's (raises otherwise)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    keys = state.model.queue.keys.detach().clone()
    ref = keys.clone()
    dist.broadcast(ref, src=0)
    ptr = state.model.queue.ptr.detach().clone()
    ptr_ref = ptr.clone()
    dist.broadcast(ptr_ref, src=0)
    if not (torch.equal(keys, ref) and torch.equal(ptr, ptr_ref)):
        raise RuntimeError(f"rank {dist.get_rank()}: queue differs from rank 0's")


# ---------------------------------------------------------------------------------------------
# the driver


@dataclass
class PretrainResult:
    run_name: str
    run_folder: str
    mlflow_run_id: str
    tracking_uri: str
    metrics: dict[str, Any]
    checkpoint_path: str
    registered: dict[str, Any] | None


def read_partitions(cfg: ExperimentConfig, check_files: bool) -> dict[str, Partition]:
    """``train`` (and ``val`` when its CSV exists, for the kNN monitor), read together."""
    csv_dir = Path(cfg.data.splits_dir or cfg.data.root)
    names = ("train", "val") if (csv_dir / "val.csv").is_file() else ("train",)
    return read_dataset(cfg.data.root, cfg.data.splits_dir, cfg.data.label_columns, names, check_files)


def absolute_data_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """Workers run in other folders: make data paths absolute on the driver."""
    data = cfg.data.model_copy(
        update={
            "root": str(Path(cfg.data.root).expanduser().resolve()),
            "splits_dir": str(Path(cfg.data.splits_dir).expanduser().resolve()) if cfg.data.splits_dir else None,
        }
    )
    return cfg.model_copy(update={"data": data})


def ensure_ray(address: str | None, cfg: ExperimentConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:  # a local cluster; its dashboard (needed by Ray Train's state API) listens on loopback only
        ray.init(dashboard_host="127.0.0.1", log_to_driver=True, logging_level="WARNING")


def build_trainer(
    cfg: ExperimentConfig,
    record: RunRecord,
    *,
    progress_queue: Any = None,
    check_queues: bool = False,
    callbacks: list | None = None,
):
    """The ``TorchTrainer`` of one run: ``train_fn_per_worker`` on ``scaling.workers`` workers, checkpoints
    under ``record.folder``; the same (storage_path, name) continues from the last checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_fn_per_worker,
        train_loop_config={
            "experiment": cfg.model_dump(mode="json"),
            "mlflow_run_id": record.mlflow_run_id,
            "tracking_uri": record.tracking_uri,
            "progress_queue": progress_queue,
            "check_queues": check_queues,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1} if cfg.scaling.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=record.name,
            storage_path=record.storage_path,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks or None,
        ),
    )


def pretrain(
    cfg: ExperimentConfig,
    *,
    resume: bool | str = False,
    address: str | None = None,
    printer: ProgressPrinter | None = None,
    check_queues: bool = False,
) -> PretrainResult:
    """Run (or resume) one pretraining run through Ray Train; returns where everything is."""
    printer = printer or ProgressPrinter()
    uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
    if resume:
        record = find_resumable(cfg, resume if isinstance(resume, str) else None)
        cfg = ExperimentConfig.model_validate(record.config)
        uri = record.tracking_uri
        printer.message(f"resuming run {record.name} (MLflow run {record.mlflow_run_id}) from {record.folder}")
    cfg = absolute_data_paths(cfg)
    parts = read_partitions(cfg, check_files=True)  # dataset faults stop here, before Ray starts
    train_p = parts["train"]
    check_monitor(cfg, parts)  # and a monitor label fraction that leaves a class empty
    if warning := queue_size_warning(len(train_p), cfg):
        printer.message(f"warning: {warning}")
    tracking.check_reachable(uri)  # an unreachable MLflow stops here too
    if resume:
        tracking.set_status(uri, record.mlflow_run_id, "RUNNING")
    else:
        run_name = f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}"
        run_id = tracking.start_run(uri, cfg, run_name, tags={"moco.ray_run_name": run_name})
        record = RunRecord(
            name=run_name, storage_path=storage_path_of(cfg), mlflow_run_id=run_id, tracking_uri=uri,
            config=cfg.model_dump(mode="json"), created=datetime.now().isoformat(),
        )
        record.save()
        printer.message(f"run {record.name}: MLflow run {run_id} at {uri}")

    ensure_ray(address, cfg)
    with ProgressRelay(printer) as relay:
        trainer = build_trainer(cfg, record, progress_queue=relay.queue, check_queues=check_queues)
        try:
            result = trainer.fit()
        except Exception as e:
            record.status = "failed"
            record.save()
            tracking.set_status(uri, record.mlflow_run_id, "FAILED")
            raise PretrainError(
                f"training failed: {e}\nThe last checkpoint is kept under {record.folder}; "
                f"fix the cause, then continue with: moco pretrain FILE --resume {record.name}"
            ) from e

    if result.checkpoint is None:
        raise PretrainError(f"run {record.name} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        final_state = load_checkpoint_dict(d)
    ckpt_path = result.checkpoint.path
    metrics = dict(result.metrics or {})
    registered = None
    with tempfile.TemporaryDirectory() as tmp:
        tracking.log_plots(uri, record.mlflow_run_id, Path(tmp) / "plots")
        registered = publish_encoder(cfg, final_state, record.mlflow_run_id, uri, metrics, dataset_fingerprint(train_p))
    tracking.set_status(uri, record.mlflow_run_id, "FINISHED")
    record.status = "finished"
    record.save()
    return PretrainResult(
        run_name=record.name, run_folder=str(record.folder), mlflow_run_id=record.mlflow_run_id,
        tracking_uri=uri, metrics=metrics, checkpoint_path=ckpt_path, registered=registered,
    )


def backbone_from_checkpoint(cfg: ExperimentConfig, state_dict: dict[str, Any]) -> torch.nn.Module:
    """The query encoder's backbone of a training checkpoint (what gets exported)."""
    from moco_core.model import build_moco

    model = build_moco(cfg, world_size=1)
    prefix = "encoder_q.backbone."
    model.encoder_q.backbone.load_state_dict(
        {k[len(prefix) :]: v for k, v in state_dict["model"].items() if k.startswith(prefix)}
    )
    return model.encoder_q.backbone.eval()


def publish_encoder(
    cfg: ExperimentConfig, state_dict: dict[str, Any], run_id: str, uri: str, metrics: dict[str, Any], fingerprint: str
) -> dict[str, Any] | None:
    """Write the encoder package, log it to the run and (if ``tracking.register``) register it."""
    import mlflow

    from . import registry

    backbone = backbone_from_checkpoint(cfg, state_dict)
    eval_metrics = {k: float(v) for k, v in metrics.items() if k.startswith("eval/")}
    mlflow.set_tracking_uri(uri)
    with tempfile.TemporaryDirectory() as tmp:
        pkg = registry.write_encoder_package(
            Path(tmp) / "encoder", backbone, cfg, fingerprint=fingerprint, run_id=run_id,
            metrics={**eval_metrics, "train/loss": float(metrics.get("train/loss", float("nan")))},
        )
        if not cfg.tracking.register:
            from mlflow.tracking import MlflowClient

            MlflowClient(uri).log_artifacts(run_id, str(pkg), "encoder")
            return None
        metric = next(iter(eval_metrics), "train/neg_loss")
        value = eval_metrics.get(metric, -float(metrics.get("train/loss", float("inf"))))
        return registry.register_encoder(
            pkg, run_id=run_id, model_name=cfg.registered_model_name, metric=scored_as(cfg, metric), value=value,
            fingerprint=fingerprint,
        )
