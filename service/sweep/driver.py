"""``moco tune`` on the driver: the driver-function pattern of Ray Train V2.

Tune runs :func:`~service.sweep.trial.trial_fn` once per trial; it builds the trial's ``TorchTrainer``
and fits it. Layout under ``run.storage_path`` (default ``./runs``)::

    <name>-tune-<timestamp>/            Tune's experiment folder (what ``Tuner.restore`` reads)
      moco_sweep.json                   the sweep record: config, MLflow parent run, status
      trials/<trial id>/                each trial's Ray Train run: checkpoints, moco_run.json, result.json

MLflow: one parent run per sweep, one child run per trial (:mod:`.finish` closes them).
"""

from __future__ import annotations

import logging
import os
import signal
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from moco_core.backbones import check_arch_fits
from moco_core.config import ExperimentConfig
from moco_core.monitor import check_monitor

from .. import storage, tracking
from ..prepare import with_store
from ..pretrain.inputs import absolute_data_paths, read_partitions
from ..progress import say
from ..ray_cluster import check_resources, ensure_ray
from ..records import SweepRecord, storage_path_of
from ..registry.init import resolve_init
from .finish import finish
from .progress import SweepProgress
from .report import TrialRow, collect
from .space import SweepError, check_trials_fit, default_concurrency, default_metric, param_space, trial_plan
from .trial import trial_dirname, trial_fn

DRIVER_MEMORY = 64 * 1024**2  # a trial driver asking for no CPU still needs a non-empty resource request


@dataclass
class SweepResult:
    name: str
    folder: str
    parent_run_id: str
    tracking_uri: str
    metric: str
    mode: str
    trials: list[TrialRow] = field(default_factory=list)  # ranked
    registered: dict[str, Any] | None = None


def tune_sweep(
    cfg: ExperimentConfig,
    *,
    resume: bool | str = False,
    address: str | None = None,
    overrides: Sequence[str] = (),
) -> SweepResult:
    """Run (or, with ``resume``: the latest unfinished sweep of this experiment, or the one named,
    resume) the sweep of ``cfg.tune`` on the cluster at ``address``; returns the ranked trials and the
    best trial's registration. With ``resume``, an item of ``overrides`` (``KEY=VALUE``) the recorded
    config does not share is refused."""
    record = None
    if resume:
        record = SweepRecord.to_resume(storage_path_of(cfg), cfg.name, resume, SweepError, say)
        record.refuse_conflicts(absolute_data_paths(cfg), overrides, SweepError)
        check_state_owned(record.folder)
        cfg = record.experiment()
        say(f"resuming sweep {record.name} (MLflow parent run {record.parent_run_id}) from {record.folder}")
    if cfg.tune is None:
        raise SweepError(
            f"experiment {cfg.name!r} has no tune: section; see docs/tune.md "
            "(experiments/digits_tune.yaml is an example)"
        )
    if cfg.run.checkpoint_every_steps:
        raise SweepError(
            "run.checkpoint_every_steps is for moco pretrain: a sweep's trials are ranked and stopped at "
            "epoch ends and checkpoint there; remove it (or --set run.checkpoint_every_steps=null)"
        )
    say(trial_plan(cfg.tune))
    cfg = absolute_data_paths(cfg)
    parts = read_partitions(cfg, check_files=True)  # dataset faults stop here, before Ray starts
    check_arch_fits(cfg)
    check_trials_fit(cfg, parts["train"])
    check_monitor(cfg, parts)
    metric = default_metric(cfg, parts)
    uri = record.tracking_uri if record is not None else tracking.resolve_tracking_uri(cfg.tracking.uri)
    tracking.check_reachable(uri)
    storage.check_writable(storage_path_of(cfg))  # and a full or read-only run.storage_path
    cfg = resolve_init(cfg, uri=uri)  # model.init: read and checked once for every trial
    cfg = with_store(cfg, say, address)  # checked, or prepared (data.prepare: auto)
    check_resources(cfg.scaling, remote=ensure_ray(address))
    if record is not None:
        record.mark("running")
    else:
        record = new_sweep(cfg, uri, metric)
    try:
        with record.held(), record.stopped_by_signals(ask_tune_to_stop) as stopping:
            results = fit(build_tuner(cfg, record, resume=bool(resume)), record)
            if stopping.is_set():  # the trials are stopped and Tune's state saved: --resume continues
                raise KeyboardInterrupt
            return finish_sweep(results, record, cfg, parts, uri, metric)
    except KeyboardInterrupt:
        say(f"sweep {record.name} stopped; continue it with: moco tune FILE --resume {record.name}")
        raise


def finish_sweep(
    results: Any, record: SweepRecord, cfg: ExperimentConfig, parts: dict, uri: str, metric: str
) -> SweepResult:
    """The trials ranked, the best one's encoder registered, the sweep finished."""
    rows = collect(results, record, cfg, list(cfg.tune.space.dims()))
    if not any(r.status == "finished" for r in rows):
        record.mark("failed")
        raise SweepError(
            f"no trial of sweep {record.name} finished; see the trial errors under {record.folder}, "
            f"fix the cause, then: moco tune FILE --resume {record.name}"
        )
    registered = finish(rows, record, cfg, parts)
    record.mark("finished")
    return SweepResult(
        name=record.name,
        folder=str(record.folder),
        parent_run_id=record.parent_run_id,
        tracking_uri=uri,
        metric=metric,
        mode=record.mode,
        trials=rows,
        registered=registered,
    )


def check_state_owned(folder: str) -> None:
    """Ray Tune restores a sweep from pickles in its folder (``tuner.pkl``, ``experiment_state-*.json``):
    whoever can write them can run code as the user who resumes. On a file system the folder and those
    files must belong to this user and not be writable by everyone; on object storage the bucket's
    policy decides (docs/cluster.md)."""
    if storage.is_uri(folder):
        return
    paths = [Path(folder), *(p for p in Path(folder).iterdir() if p.is_file())]
    for path in paths:
        st = path.lstat()
        if st.st_uid != os.getuid():
            raise SweepError(
                f"refusing to resume from {path}: it belongs to uid {st.st_uid}, not to you (uid "
                f"{os.getuid()}); Ray Tune's state there is unpickled on resume, so only state you own is "
                "restored"
            )
        if st.st_mode & stat.S_IWOTH:
            raise SweepError(
                f"refusing to resume from {path}: anyone may write it (mode {stat.filemode(st.st_mode)}); "
                f"Ray Tune's state there is unpickled on resume. If it is yours: chmod o-w {path}"
            )


def new_sweep(cfg: ExperimentConfig, uri: str, metric: str) -> SweepRecord:
    """A new MLflow parent run and the record that finds the sweep again."""
    assert cfg.tune is not None
    name = SweepRecord.reserve(storage_path_of(cfg), f"{cfg.name}-tune")
    mode = cfg.tune.resolved_mode(metric)
    parent = tracking.start_run(
        uri, cfg, name, tags={"moco.sweep": name, "moco.tune.metric": metric, "moco.tune.mode": mode}
    )
    record = SweepRecord(
        name=name,
        storage_path=storage_path_of(cfg),
        parent_run_id=parent,
        tracking_uri=uri,
        metric=metric,
        mode=mode,
        config=cfg.model_dump(mode="json"),
        created=datetime.now().isoformat(),
    )
    record.save()
    say(f"sweep {name}: MLflow parent run {parent} at {uri}")
    return record


def build_tuner(cfg: ExperimentConfig, record: SweepRecord, *, resume: bool) -> Any:
    """The ``Tuner`` of the sweep (restored from its folder on resume): ``trial_fn`` with the sweep's
    context, the search space, ASHA, and one progress line per trial event."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    assert cfg.tune is not None
    keys = list(cfg.tune.space.dims())
    ctx = {
        "experiment": cfg.model_dump(mode="json"),
        "keys": keys,
        "trials_dir": str(record.trials_dir),
        "parent_run_id": record.parent_run_id,
        "tracking_uri": record.tracking_uri,
        "sweep": record.name,
    }
    driver = (
        {"cpu": cfg.tune.driver_cpus} if cfg.tune.driver_cpus > 0 else {"cpu": 0, "memory": DRIVER_MEMORY}
    )
    trainable = tune.with_resources(tune.with_parameters(trial_fn, ctx=ctx), driver)
    if resume:
        return tune.Tuner.restore(
            record.folder, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    asha = cfg.tune.asha
    scheduler = (
        ASHAScheduler(
            time_attr="epoch",
            max_t=cfg.optim.epochs,
            grace_period=asha.grace_period,
            reduction_factor=asha.reduction_factor,
        )
        if asha
        else None
    )
    search = BasicVariantGenerator(
        max_concurrent=cfg.tune.max_concurrent_trials or default_concurrency(cfg),
        random_state=cfg.tune.seed if cfg.tune.seed is not None else cfg.run.seed,
    )
    return tune.Tuner(
        trainable,
        param_space=param_space(cfg.tune),
        tune_config=tune.TuneConfig(
            metric=record.metric,
            mode=record.mode,
            num_samples=cfg.tune.num_samples,
            search_alg=search,
            scheduler=scheduler,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=record.name,
            storage_path=record.storage_path,
            failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures),
            callbacks=[SweepProgress(cfg.optim.epochs, keys, record.metric, asha is not None)],
            verbose=0,
        ),
    )


TUNE_LOGGER = logging.getLogger("ray.tune.tune")  # tune.run's own lines: its stop and resume hints
TUNE_SIGINT = "TUNE_DISABLE_SIGINT_HANDLER"  # set: tune.run leaves SIGINT to the handler in place


def fit(tuner: Any, record: SweepRecord) -> Any:
    """``tuner.fit()``; a failure marks the sweep failed and says how to continue it. Ctrl-C stays
    ours while it runs (see :func:`ask_tune_to_stop`); Tune's signal handler and log level are put back
    after it."""
    listening, level = signal.getsignal(signal.SIGUSR1), TUNE_LOGGER.level
    sigint = os.environ.get(TUNE_SIGINT)
    os.environ[TUNE_SIGINT] = "1"
    try:
        return tuner.fit()
    except Exception as e:
        record.mark("failed")
        raise SweepError(
            f"sweep failed: {e}\nFinished trials are kept under {record.folder}; "
            f"continue with: moco tune FILE --resume {record.name}"
        ) from e
    finally:
        signal.signal(signal.SIGUSR1, listening)  # Tune leaves its stop handler behind
        TUNE_LOGGER.setLevel(level)
        if sigint is None:
            os.environ.pop(TUNE_SIGINT, None)
        else:
            os.environ[TUNE_SIGINT] = sigint


def ask_tune_to_stop() -> bool:
    """Stop a running ``tuner.fit()`` as Ctrl-C stops one left to itself: Tune ends its loop, stops
    the trials (their Train workers with them) and saves its state for ``--resume``. Tune listens to
    SIGUSR1 for that (and to SIGINT unless TUNE_DISABLE_SIGINT_HANDLER, which keeps SIGINT ours, so
    that the record is marked first); False where no Tune loop is listening."""
    handler = signal.getsignal(signal.SIGUSR1)
    if not callable(handler):
        return False
    # Tune then says it got a stop signal and how to resume with Tuner.restore: this stop is ours, and
    # so is the line that says how to continue (moco tune FILE --resume NAME)
    TUNE_LOGGER.setLevel(logging.ERROR)
    handler(signal.SIGUSR1, None)
    return True


__all__ = ["SweepResult", "tune_sweep"]
