"""``moco pretrain`` on the driver: check everything that can be checked before Ray starts, open (or
reopen) the run, fit the ``TorchTrainer``, then publish the encoder.

Driver: validate config and data -> check MLflow -> create (or find, on ``--resume``) the run record
and its MLflow run -> ``TorchTrainer.fit`` -> plots -> encoder package -> registry.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from moco_core.backbones import check_arch_fits
from moco_core.checkpoint import load_checkpoint
from moco_core.config import ExperimentConfig
from moco_core.data import Partition, dataset_fingerprint, scoring_fingerprint
from moco_core.errors import UserError
from moco_core.monitor import check_monitor
from moco_core.pipeline import check_partition_fits, queue_size_warning

from .. import storage, tracking
from ..lineage import log_training_data
from ..prepare import with_store
from ..progress import ProgressPrinter, ProgressRelay
from ..ray_cluster import check_resources, ensure_ray, train_logging
from ..records import RunRecord, storage_path_of
from ..registry.init import resolve_init
from ..registry.publish import publish_encoder
from .epochs import SCORE_KEY, UNMEASURED
from .failures import fault_of_the_run, fit_with_retries
from .inputs import absolute_data_paths, read_partitions
from .worker import train_fn_per_worker


class PretrainError(UserError, RuntimeError):
    """A pretraining run could not start or finish; the message says why and what to do."""


@dataclass
class PretrainResult:
    run_name: str
    run_folder: str
    mlflow_run_id: str
    tracking_uri: str
    metrics: dict[str, Any]
    checkpoint_path: str  # the last one
    registered: dict[str, Any] | None
    published_epoch: int | None = None  # the epoch whose encoder was published (tracking.publish)
    published_as: str = "last"  # best: the monitor's best epoch; last: the last one
    published_checkpoint_path: str | None = None  # the checkpoint of the published encoder


def pretrain(
    cfg: ExperimentConfig,
    *,
    resume: bool | str = False,
    address: str | None = None,
    printer: ProgressPrinter | None = None,
    overrides: Sequence[str] = (),
) -> PretrainResult:
    """Run (or, with ``resume``: the latest unfinished run of this experiment, or the one named, resume)
    one pretraining run through Ray Train on the cluster at ``address``; returns where everything is.
    ``overrides`` are the ``KEY=VALUE`` items ``cfg`` was given: with ``resume``, one the recorded config
    does not share is refused (a resumed run continues as recorded)."""
    printer = printer or ProgressPrinter()
    record = None
    if resume:
        record = RunRecord.to_resume(storage_path_of(cfg), cfg.name, resume, PretrainError, printer.message)
        record.refuse_conflicts(absolute_data_paths(cfg), overrides, PretrainError)
        cfg = record.experiment()
        printer.message(
            f"resuming run {record.name} (MLflow run {record.mlflow_run_id}) from {record.folder}"
        )
    cfg = absolute_data_paths(cfg)
    parts = check_inputs(cfg, printer)
    train_p = parts["train"]
    uri = record.tracking_uri if record is not None else tracking.resolve_tracking_uri(cfg.tracking.uri)
    tracking.check_reachable(uri)  # an unreachable MLflow stops here too
    storage.check_writable(storage_path_of(cfg))  # and a full or read-only run.storage_path
    cfg = resolve_init(cfg, uri=uri)  # model.init: read and checked here, a file the workers read
    if record is not None and record.trained is not None:  # trained; publishing failed: no Ray needed
        record.mark("running")
        with record.held():
            return publish(cfg, record, parts)
    cfg = with_store(cfg, printer.message, address)  # checked, or prepared (data.prepare: auto)
    check_resources(cfg.scaling, remote=ensure_ray(address))  # and workers the cluster cannot hold
    if record is not None:
        record.mark("running")
    else:
        record = new_run(cfg, uri, printer, dataset_fingerprint(train_p))
    try:
        with record.held(), record.stopped_by_signals(), ProgressRelay(printer) as relay:
            result = fit(lambda: build_trainer(cfg, record, progress_queue=relay.queue), cfg, record, printer)
            record_trained(cfg, record, result)
            return publish(cfg, record, parts)
    except KeyboardInterrupt:
        printer.message(
            f"run {record.name} stopped; continue it with: moco pretrain FILE --resume {record.name}"
        )
        raise


def check_inputs(cfg: ExperimentConfig, printer: ProgressPrinter) -> dict[str, Partition]:
    """Dataset faults and a monitor label fraction that leaves a class empty stop here, before Ray
    starts; a queue as large as the data set is worth a warning. Returns the partitions read (train,
    and val for the monitor)."""
    if cfg.tracking.system_metrics and importlib.util.find_spec("psutil") is None:
        raise PretrainError(
            "tracking.system_metrics needs psutil (and nvidia-ml-py for GPUs): "
            "pip install 'moco-service[system-metrics]'"
        )
    parts = read_partitions(cfg, check_files=True)
    check_arch_fits(cfg)
    check_partition_fits(cfg, parts["train"])
    check_monitor(cfg, parts)
    if warning := queue_size_warning(len(parts["train"]), cfg):
        printer.message(f"warning: {warning}")
    return parts


def new_run(cfg: ExperimentConfig, uri: str, printer: ProgressPrinter, fingerprint: str) -> RunRecord:
    """A new MLflow run, its training data as a dataset input, and the record that finds it again (its
    folder, and so its name, reserved first)."""
    name = RunRecord.reserve(storage_path_of(cfg), cfg.name)
    run_id = tracking.start_run(uri, cfg, name, tags={"moco.ray_run_name": name})
    log_training_data(uri, run_id, cfg, fingerprint)
    record = RunRecord(
        name=name,
        storage_path=storage_path_of(cfg),
        mlflow_run_id=run_id,
        tracking_uri=uri,
        config=cfg.model_dump(mode="json"),
        created=datetime.now().isoformat(),
    )
    record.save()
    printer.message(f"run {record.name}: MLflow run {run_id} at {uri}")
    return record


def build_trainer(
    cfg: ExperimentConfig, record: RunRecord, *, progress_queue: Any = None, callbacks: list | None = None
) -> Any:
    """The ``TorchTrainer`` of one run: ``train_fn_per_worker`` on ``scaling.workers`` workers, checkpoints
    under ``record.folder``; the same (storage_path, name) continues from the last checkpoint. The config
    crosses to the workers as a dict, validated again there."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    gpu = {"GPU": 1} if cfg.scaling.use_gpu else {}
    logging_config = train_logging()
    return TorchTrainer(
        train_fn_per_worker,
        train_loop_config={
            "experiment": cfg.model_dump(mode="json"),
            "mlflow_run_id": record.mlflow_run_id,
            "tracking_uri": record.tracking_uri,
            "progress_queue": progress_queue,
            "log_level": logging_config.log_level,
            "mlflow_env": mlflow_client_env(),
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker, **gpu},
        ),
        run_config=RunConfig(
            name=record.name,
            storage_path=record.storage_path,
            failure_config=FailureConfig(max_failures=0),  # retries: fit_with_retries
            # the 2 best by the monitor, and the latest (always kept: a restart continues from it)
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=SCORE_KEY, checkpoint_score_order="max"
            ),
            callbacks=callbacks or None,
            logging_config=logging_config,
        ),
    )


def mlflow_client_env() -> dict[str, str]:
    """The driver's MLflow client settings (``MLFLOW_HTTP_REQUEST_*``: timeout, retries, backoff) that
    rank 0's metric logging uses too; a remote cluster's workers would not see them otherwise."""
    return {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_HTTP_REQUEST_")}


def fit(make_trainer: Any, cfg: ExperimentConfig, record: RunRecord, printer: ProgressPrinter) -> Any:
    """Fit (retrying faults of the world, see :mod:`.failures`); a failure marks the run failed and says
    how to continue it."""
    try:
        return fit_with_retries(make_trainer, cfg.run.max_failures, printer.message)
    except Exception as e:
        record.mark("failed")
        raise PretrainError(
            f"training failed: {fault_of_the_run(e) or e}\n"
            f"The last checkpoint is kept under {record.folder}; "
            f"fix the cause, then continue with: moco pretrain FILE --resume {record.name}"
        ) from e


def record_trained(cfg: ExperimentConfig, record: RunRecord, result: Any) -> None:
    """Training is over: the checkpoint to publish (see :func:`published_checkpoint`), the last one and
    their metrics go into the record, so that a publish that fails is retried with no Ray cluster."""
    if result.checkpoint is None:
        raise PretrainError(f"run {record.name} finished without a checkpoint")
    checkpoint, published, chosen = published_checkpoint(cfg, result)

    def where(c: Any) -> str:  # a URI on object storage (Ray's path there has no scheme)
        return storage.join(record.folder, c.path.rstrip("/").rsplit("/", 1)[-1])

    record.trained = {
        "checkpoint": where(checkpoint),
        "metrics": json_safe(published),
        "chosen": chosen,
        "last_checkpoint": where(result.checkpoint),
        "last_metrics": json_safe(dict(result.metrics or {})),
    }
    record.save()


def json_safe(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers (and strings) of reported ``metrics``, as JSON holds them."""
    return {
        k: v if isinstance(v, str | int) else float(v)
        for k, v in metrics.items()
        if isinstance(v, str | int) or hasattr(v, "__float__")
    }


def publish(cfg: ExperimentConfig, record: RunRecord, parts: dict[str, Partition]) -> PretrainResult:
    """The encoder of the checkpoint the record names (packaged, logged, registered: never a second
    version of one run), the run finished. A failure marks it failed and says how to retry."""
    from ray.train import Checkpoint

    trained = record.trained
    assert trained is not None
    with Checkpoint(trained["checkpoint"]).as_directory() as d:
        state = load_checkpoint(d)
    uri, published, chosen = record.tracking_uri, trained["metrics"], trained["chosen"]
    fingerprint, epoch = dataset_fingerprint(parts["train"]), int(state["epoch"])
    try:
        registered = publish_encoder(
            cfg,
            state,
            record.mlflow_run_id,
            uri,
            published,
            fingerprint,
            epoch,
            chosen,
            scored_on=scoring_fingerprint(parts),
        )
    except Exception as e:
        told = record.mark("failed")
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PretrainError(
            f"run {record.name} trained, but publishing its encoder to MLflow {uri} failed: {cause}\n"
            f"The checkpoints are kept under {record.folder}"
            + ("" if told else " (MLflow still shows the run as running)")
            + f"; publish it (never a second version) with: moco pretrain FILE --resume {record.name}"
        ) from e
    record.mark("finished")
    return PretrainResult(
        run_name=record.name,
        run_folder=str(record.folder),
        mlflow_run_id=record.mlflow_run_id,
        tracking_uri=uri,
        metrics=dict(trained["last_metrics"]),
        checkpoint_path=trained["last_checkpoint"],
        registered=registered,
        published_epoch=epoch,
        published_as=chosen,
        published_checkpoint_path=trained["checkpoint"],
    )


def published_checkpoint(cfg: ExperimentConfig, result: Any) -> tuple[Any, dict[str, Any], str]:
    """The checkpoint whose encoder is published, the metrics reported with it, and how it was chosen:
    with ``tracking.publish: best``, the one the monitor scored highest (the later one of a tie), else
    (or with no monitor) the last."""
    last = (result.checkpoint, dict(result.metrics or {}), "last")
    if cfg.tracking.publish == "last":
        return last
    scored = [
        (float(m[SCORE_KEY]), m.get("step", 0), c, m)
        for c, m in (result.best_checkpoints or [])
        if float(m.get(SCORE_KEY, UNMEASURED)) > UNMEASURED
    ]
    if not scored:
        return last
    *_, checkpoint, metrics = max(scored, key=lambda t: t[:2])
    return checkpoint, dict(metrics), "best"


__all__ = ["PretrainError", "PretrainResult", "pretrain", "build_trainer"]
