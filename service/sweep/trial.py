"""One trial of a sweep, run in a Tune trial actor: its config, its child MLflow run, its
``TorchTrainer`` (the one ``moco pretrain`` uses); every epoch is reported to Tune through Ray Train's
``TuneReportCallback``, where ASHA may stop the trial early.

A trial restarted by Tune (driver failure, or ``moco tune --resume``) finds its record and continues
its Ray Train run from the last checkpoint, in the same MLflow run. A trial whose training had already
finished trains nothing again: it reports its last result to Tune, read from Ray Train's checkpoint
records.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from moco_core.config import ExperimentConfig

from .. import storage, tracking
from ..pretrain import build_trainer
from ..pretrain.failures import fit_with_retries
from ..progress import say
from ..records import RunRecord

TAG_TRIAL_STARTS = "moco.trial_starts"  # how many times the trial trained (1 unless it was resumed)


def trial_dirname(trial: Any) -> str:
    return trial.trial_id


def trial_fn(config: dict[str, Any], ctx: dict[str, Any]) -> None:
    """One trial: ``config`` holds the swept values, ``ctx`` the sweep (the experiment as a dict, the
    swept keys, the trials folder, the parent MLflow run and the tracking URI)."""
    import ray
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = ray.tune.get_context().get_trial_id()
    folder = storage.join(ctx["trials_dir"], trial_id)
    if RunRecord.exists(folder):
        record = RunRecord.load(folder)
        done = completed_result(folder, record.experiment().optim.epochs)
        if done is not None:
            record.mark("finished")
            ray.tune.report(done)
            return
        record.mark("running")
    else:
        record = new_trial_run(config, ctx, trial_id)
    count_start(record)
    # The TorchTrainer runs in a child task whose environment names this cluster: when ASHA stops the
    # trial, Ray Train's placement-group cleaner (which asks the state API whether the trial's controller
    # is alive) must reach this cluster even where several Ray clusters share the machine.
    fit = ray.remote(num_cpus=0)(fit_trial).options(
        runtime_env={"env_vars": {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}}
    )
    finished = False
    try:
        ray.get(fit.remote(asdict(record), TuneReportCallback()))
        finished = True
    finally:  # a failure still goes up to Tune (which may restart the trial)
        record.mark("finished" if finished else "failed")


def new_trial_run(config: dict[str, Any], ctx: dict[str, Any], trial_id: str) -> RunRecord:
    """The trial's config (the swept values applied), its child MLflow run and its record."""
    cfg = ExperimentConfig.model_validate(ctx["experiment"]).trial({k: config[k] for k in ctx["keys"]})
    uri = ctx["tracking_uri"]
    run_id = tracking.start_run(
        uri,
        cfg,
        f"{ctx['sweep']}-{trial_id}",
        parent_run_id=ctx["parent_run_id"],
        tags={"moco.sweep": ctx["sweep"], "moco.trial_id": trial_id, "moco.ray_run_name": trial_id},
    )
    record = RunRecord(
        name=trial_id,
        storage_path=ctx["trials_dir"],
        mlflow_run_id=run_id,
        tracking_uri=uri,
        config=cfg.model_dump(mode="json"),
        created=datetime.now().isoformat(),
    )
    record.save()
    return record


def count_start(record: RunRecord) -> None:
    """One more start of the trial's training, in its MLflow run's tag (visible after a resume)."""
    client = tracking.client(record.tracking_uri)
    starts = int(client.get_run(record.mlflow_run_id).data.tags.get(TAG_TRIAL_STARTS, 0)) + 1
    client.set_tag(record.mlflow_run_id, TAG_TRIAL_STARTS, str(starts))


def trained_result(folder: str) -> Any:
    """The Ray Train result of a trial's folder (its checkpoints and what each epoch reported), or
    ``None`` where the trial checkpointed nothing yet."""
    import ray.train

    try:
        result = ray.train.Result.from_path(folder)
    except Exception:  # noqa: BLE001 - no checkpoint registered yet
        return None
    return result if result.checkpoint is not None else None


def completed_result(folder: str, epochs: int) -> dict[str, Any] | None:
    """The last report of a Ray Train run whose final epoch is checkpointed, else ``None``."""
    result = trained_result(folder)
    metrics = dict(result.metrics or {}) if result is not None else {}
    if result is None or metrics.get("epoch") != epochs:
        return None
    last = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    last["checkpoint_path"] = result.checkpoint.path
    return last


def fit_trial(record: dict[str, Any], report_callback: Any) -> None:
    """Fit one trial's TorchTrainer (continuing from its last checkpoint, if any; faults of the world
    retried as for ``moco pretrain``)."""
    rec = RunRecord(**record)
    cfg = rec.experiment()
    fit_with_retries(lambda: build_trainer(cfg, rec, callbacks=[report_callback]), cfg.run.max_failures, say)


__all__ = ["TAG_TRIAL_STARTS", "trial_fn", "trial_dirname"]
