"""Ray Tune sweeps over MoCo's temperature T, queue size K and momentum m (and the learning rate).

The driver-function pattern of Ray Train V2: Tune runs :func:`trial_fn` once per trial; it builds the
trial's ``TorchTrainer`` (the same one ``moco pretrain`` uses) and fits it, and Ray Train's
``TuneReportCallback`` forwards every epoch report to Tune, where ASHA may stop the trial early.

Layout under ``run.storage_path`` (default ``./runs``)::

    <name>-tune-<timestamp>/            Tune's experiment folder (what ``Tuner.restore`` reads)
      moco_sweep.json                   the sweep record: config, MLflow parent run, status
      trials/<trial id>/                each trial's Ray Train run: checkpoints, moco_run.json, result.json

MLflow: one parent run per sweep, one child run per trial. The results table, the plots and the best
trial's registration are in :mod:`service.sweep_report`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from moco_core.config import ExperimentConfig, TuneConfig

# Ray, MLflow and torch are imported inside the functions: `moco --help` stays fast.

log = logging.getLogger(__name__)

SWEEP_RECORD = "moco_sweep.json"
TRIALS_DIR = "trials"
TAG_TRIAL_STARTS = "moco.trial_starts"  # how many times the trial trained (1 unless it was resumed)
DRIVER_MEMORY = 64 * 1024**2  # a trial driver asking for no CPU still needs a non-empty resource request


class SweepError(RuntimeError):
    """A sweep could not start or finish; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------
# the sweep record: what --resume needs


@dataclass
class SweepRecord:
    name: str  # Tune experiment name: <experiment name>-tune-<timestamp>
    storage_path: str
    parent_run_id: str
    tracking_uri: str
    metric: str
    mode: str
    config: dict[str, Any]
    status: str = "running"  # running | finished | failed
    created: str = ""

    @property
    def folder(self) -> str:
        """``storage_path/name``: a local folder or a URI; Tune's experiment folder."""
        from . import storage

        return storage.join(self.storage_path, self.name)

    @property
    def trials_dir(self) -> str:
        from . import storage

        return storage.join(self.folder, TRIALS_DIR)

    def save(self) -> None:
        from . import storage

        storage.write_text(storage.join(self.folder, SWEEP_RECORD), json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: str) -> SweepRecord:
        from . import storage

        return cls(**json.loads(storage.read_text(storage.join(folder, SWEEP_RECORD))))


def find_sweep(cfg: ExperimentConfig, sweep_name: str | None = None) -> SweepRecord:
    """The named sweep, or the latest unfinished sweep of this experiment."""
    from . import storage
    from .train import storage_path_of

    root = storage_path_of(cfg)
    if sweep_name:
        if not storage.exists(storage.join(root, sweep_name, SWEEP_RECORD)):
            raise SweepError(f"no sweep named {sweep_name!r} under {root}")
        return SweepRecord.load(storage.join(root, sweep_name))
    candidates = [
        rec
        for name in storage.list_dirs(root)
        if name.startswith(f"{cfg.name}-tune-") and storage.exists(storage.join(root, name, SWEEP_RECORD))
        and (rec := SweepRecord.load(storage.join(root, name))).status != "finished"
        and rec.config.get("name") == cfg.name
    ]
    if not candidates:
        raise SweepError(
            f"nothing to resume: no unfinished sweep of experiment {cfg.name!r} under {root}; "
            "start a fresh sweep without --resume"
        )
    return max(candidates, key=lambda r: r.created)


# ---------------------------------------------------------------------------------------------
# config -> Ray Tune objects


def default_metric(cfg: ExperimentConfig, parts: dict) -> str:
    """``tune.metric``, else ``eval/knn_top1`` (multi-class) or ``eval/knn_auroc`` (binary, multi-label)."""
    from .train import _label_kind_usable

    usable = _label_kind_usable(parts)
    metric = cfg.tune.metric if cfg.tune else None
    if metric is None:
        if not usable:
            raise SweepError(
                f"{cfg.data.root} has no labelled val partition, so the kNN monitor cannot rank trials: "
                "add val.csv with labels, or set tune.metric: train/loss (only comparable at equal T and K)"
            )
        return "eval/knn_top1" if parts["train"].label_kind == "multiclass" else "eval/knn_auroc"
    if metric.startswith("eval/"):
        kind = parts["train"].label_kind if usable else "none"
        expected = "eval/knn_top1" if kind == "multiclass" else "eval/knn_auroc"
        if not usable or metric != expected:
            raise SweepError(
                f"tune.metric={metric} is not measured on {cfg.data.root} (labels: {kind}); "
                f"use {expected if usable else 'train/loss'}"
            )
    return metric


def param_space(tune_cfg: TuneConfig) -> dict[str, Any]:
    """``{"moco.temperature": tune.grid_search([...]), ...}``; integer ranges include both ends."""
    from ray import tune

    space: dict[str, Any] = {}
    for key, dim in tune_cfg.space.dims().items():
        if dim.values is not None:
            space[key] = tune.grid_search(dim.values) if tune_cfg.search == "grid" else tune.choice(dim.values)
        elif dim.uniform is not None:
            space[key] = tune.uniform(*dim.uniform)
        elif dim.loguniform is not None:
            space[key] = tune.loguniform(*dim.loguniform)
        elif dim.randint is not None:
            space[key] = tune.randint(dim.randint[0], dim.randint[1] + 1)
        elif dim.lograndint is not None:
            space[key] = tune.lograndint(dim.lograndint[0], dim.lograndint[1] + 1)
    return space


def default_concurrency(cfg: ExperimentConfig) -> int:
    """As many trials as the cluster's CPUs (and GPUs) hold at once, at least one."""
    import ray

    total = ray.cluster_resources()
    n = int(total.get("CPU", 1) // (cfg.scaling.workers * cfg.scaling.cpus_per_worker))
    if cfg.scaling.use_gpu:
        n = min(n, int(total.get("GPU", 0) // cfg.scaling.workers))
    return max(1, n)


def trial_dirname(trial: Any) -> str:
    return trial.trial_id


# ---------------------------------------------------------------------------------------------
# one trial (runs in a Tune trial actor)


def trial_fn(config: dict[str, Any], ctx: dict[str, Any]) -> None:
    """One trial: its config, its child MLflow run, its ``TorchTrainer``; epochs are reported to Tune.

    A trial restarted by Tune (driver failure, or ``moco tune --resume``) finds its record and continues
    its Ray Train run from the last checkpoint, in the same MLflow run. A trial whose training had
    already finished trains nothing again: it reports its last result to Tune, read from Ray Train's
    checkpoint records.
    """
    import ray
    import ray.tune
    from mlflow.tracking import MlflowClient
    from ray.tune.integration.ray_train import TuneReportCallback

    from . import storage, tracking
    from .train import RUN_RECORD, RunRecord

    trial_id = ray.tune.get_context().get_trial_id()
    folder = storage.join(ctx["trials_dir"], trial_id)
    uri = ctx["tracking_uri"]
    if storage.exists(storage.join(folder, RUN_RECORD)):
        record = RunRecord.load(folder)
        done = _completed_result(folder, ExperimentConfig.model_validate(record.config).optim.epochs)
        if done is not None:
            _close_trial(record, "finished")
            ray.tune.report(done)
            return
        tracking.set_status(uri, record.mlflow_run_id, "RUNNING")
    else:
        values = {k: config[k] for k in ctx["keys"]}
        cfg = ExperimentConfig.model_validate(ctx["experiment"]).trial(values)
        run_id = tracking.start_run(
            uri, cfg, f"{ctx['sweep']}-{trial_id}", parent_run_id=ctx["parent_run_id"],
            tags={"moco.sweep": ctx["sweep"], "moco.trial_id": trial_id, "moco.ray_run_name": trial_id},
        )
        record = RunRecord(
            name=trial_id, storage_path=ctx["trials_dir"], mlflow_run_id=run_id, tracking_uri=uri,
            config=cfg.model_dump(mode="json"), created=datetime.now().isoformat(),
        )
        record.save()
    client = MlflowClient(uri)
    starts = int(client.get_run(record.mlflow_run_id).data.tags.get(TAG_TRIAL_STARTS, 0)) + 1
    client.set_tag(record.mlflow_run_id, TAG_TRIAL_STARTS, str(starts))

    # The TorchTrainer runs in a child task whose environment names this cluster: when ASHA stops the
    # trial, Ray Train's placement-group cleaner (which asks the state API whether the trial's controller
    # is alive) must reach this cluster even where several Ray clusters share the machine.
    fit = ray.remote(num_cpus=0)(_fit_trial).options(
        runtime_env={"env_vars": {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}}
    )
    try:
        ray.get(fit.remote(record.config, asdict(record), TuneReportCallback()))
    except Exception:
        _close_trial(record, "failed")
        raise
    _close_trial(record, "finished")


def _close_trial(record: Any, status: str) -> None:
    from . import tracking

    tracking.set_status(record.tracking_uri, record.mlflow_run_id, status.upper())
    record.status = status
    record.save()


def _completed_result(folder: str, epochs: int) -> dict[str, Any] | None:
    """The last report of a Ray Train run whose final epoch is checkpointed, else ``None``."""
    import ray.train

    try:
        result = ray.train.Result.from_path(folder)
    except Exception:  # noqa: BLE001 - no checkpoint registered yet: nothing finished
        return None
    metrics = dict(result.metrics or {})
    if result.checkpoint is None or metrics.get("epoch") != epochs:
        return None
    last = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    last["checkpoint_path"] = result.checkpoint.path
    return last


def _fit_trial(config: dict[str, Any], record: dict[str, Any], report_callback: Any) -> None:
    """Fit one trial's TorchTrainer (continuing from its last checkpoint, if any)."""
    from .train import RunRecord, build_trainer

    build_trainer(ExperimentConfig.model_validate(config), RunRecord(**record), callbacks=[report_callback]).fit()


# ---------------------------------------------------------------------------------------------
# the driver


@dataclass
class SweepResult:
    name: str
    folder: str
    parent_run_id: str
    tracking_uri: str
    metric: str
    mode: str
    trials: list = field(default_factory=list)  # sweep_report.TrialRow, ranked
    registered: dict[str, Any] | None = None


def tune_sweep(
    cfg: ExperimentConfig,
    *,
    resume: bool | str = False,
    address: str | None = None,
) -> SweepResult:
    """Run (or resume) the sweep of ``cfg.tune``; returns the ranked trials and the registration."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from . import sweep_report, tracking
    from .train import absolute_data_paths, check_monitor, ensure_ray, read_partitions, storage_path_of

    if resume:
        record = find_sweep(cfg, resume if isinstance(resume, str) else None)
        cfg = ExperimentConfig.model_validate(record.config)
        print(f"resuming sweep {record.name} (MLflow parent run {record.parent_run_id}) from {record.folder}",
              file=sys.stderr)
    if cfg.tune is None:
        raise SweepError(f"experiment {cfg.name!r} has no tune: section; see docs/tune.md "
                         "(experiments/digits_tune.yaml is an example)")
    cfg = absolute_data_paths(cfg)
    parts = read_partitions(cfg, check_files=True)  # dataset faults stop here, before Ray starts
    check_monitor(cfg, parts)
    metric = default_metric(cfg, parts)
    mode = cfg.tune.resolved_mode(metric)
    uri = record.tracking_uri if resume else tracking.resolve_tracking_uri(cfg.tracking.uri)
    tracking.check_reachable(uri)
    if resume:
        tracking.set_status(uri, record.parent_run_id, "RUNNING")
    else:
        name = f"{cfg.name}-tune-{datetime.now():%Y%m%d-%H%M%S}"
        parent = tracking.start_run(uri, cfg, name, tags={"moco.sweep": name, "moco.tune.metric": metric,
                                                          "moco.tune.mode": mode})
        record = SweepRecord(
            name=name, storage_path=storage_path_of(cfg), parent_run_id=parent, tracking_uri=uri, metric=metric,
            mode=mode, config=cfg.model_dump(mode="json"), created=datetime.now().isoformat(),
        )
        record.save()
        print(f"sweep {name}: MLflow parent run {parent} at {uri}", file=sys.stderr)

    ensure_ray(address, cfg)
    keys = list(cfg.tune.space.dims())
    ctx = {
        "experiment": cfg.model_dump(mode="json"), "keys": keys, "trials_dir": str(record.trials_dir),
        "parent_run_id": record.parent_run_id, "tracking_uri": uri, "sweep": record.name,
    }
    driver = {"cpu": cfg.tune.driver_cpus} if cfg.tune.driver_cpus > 0 else {"cpu": 0, "memory": DRIVER_MEMORY}
    trainable = tune.with_resources(tune.with_parameters(trial_fn, ctx=ctx), driver)
    if resume:
        tuner = tune.Tuner.restore(record.folder, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        asha = cfg.tune.asha
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(cfg.tune),
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=mode,
                num_samples=cfg.tune.num_samples,
                search_alg=BasicVariantGenerator(
                    max_concurrent=cfg.tune.max_concurrent_trials or default_concurrency(cfg),
                    random_state=cfg.tune.seed if cfg.tune.seed is not None else cfg.run.seed,
                ),
                scheduler=ASHAScheduler(time_attr="epoch", max_t=cfg.optim.epochs, grace_period=asha.grace_period,
                                        reduction_factor=asha.reduction_factor) if asha else None,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=record.name,
                storage_path=record.storage_path,
                failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures),
                callbacks=[sweep_report.SweepProgress(cfg.optim.epochs, keys, metric, asha is not None)],
                verbose=0,
            ),
        )
    try:
        results = tuner.fit()
    except Exception as e:
        record.status = "failed"
        record.save()
        tracking.set_status(uri, record.parent_run_id, "FAILED")
        raise SweepError(f"sweep failed: {e}\nFinished trials are kept under {record.folder}; "
                         f"continue with: moco tune FILE --resume {record.name}") from e

    rows = sweep_report.collect(results, record, cfg, keys)
    if not any(r.status == "finished" for r in rows):
        record.status = "failed"
        record.save()
        tracking.set_status(uri, record.parent_run_id, "FAILED")
        raise SweepError(f"no trial of sweep {record.name} finished; see the trial errors under {record.folder}, "
                         f"fix the cause, then: moco tune FILE --resume {record.name}")
    registered = sweep_report.finish(rows, record, cfg, parts["train"])
    tracking.set_status(uri, record.parent_run_id, "FINISHED")
    record.status = "finished"
    record.save()
    return SweepResult(name=record.name, folder=str(record.folder), parent_run_id=record.parent_run_id,
                       tracking_uri=uri, metric=metric, mode=mode, trials=rows, registered=registered)


# ---------------------------------------------------------------------------------------------
# the command


def cmd_tune(args: argparse.Namespace) -> int:
    from moco_core.config import load_config

    from . import sweep_report

    extra = [f"tune.num_samples={args.samples}"] if args.samples is not None else []
    cfg = load_config(args.file, [*args.overrides, *extra])
    resume: bool | str = False
    if args.resume is not None:
        resume = args.resume or True
    elif cfg.tune is None:
        raise SweepError(f"{args.file} has no tune: section; see docs/tune.md "
                         "(experiments/digits_tune.yaml is an example)")
    result = tune_sweep(cfg, resume=resume, address=args.address)
    print(sweep_report.format_result(result))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``moco tune`` to the ``moco`` parser."""
    p = sub.add_parser(
        "tune", help="Ray Tune sweep over moco.temperature, moco.queue_size, moco.momentum (and optim.lr)",
        description="Sweep the experiment's tune: section with Ray Tune: one Ray Train run per trial, ASHA early "
                    "stopping on the per-epoch metric, a parent MLflow run with one child run per trial; the best "
                    "trial's encoder is registered. Runs on a local Ray cluster unless --address or RAY_ADDRESS "
                    "names one.",
    )
    p.add_argument("file", metavar="FILE", help="experiment YAML file with a tune: section (see experiments/)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set tune.space.moco.temperature=[0.1,0.2] (repeatable)",
    )
    p.add_argument("--samples", type=int, default=None, metavar="N", help="sets tune.num_samples")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="SWEEP",
                   help="continue the latest unfinished sweep of this experiment, or the named SWEEP, without "
                        "rerunning finished trials (the sweep's saved config is used)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else local)")
    p.set_defaults(func=cmd_tune)
