"""The sweep's search, as Ray Tune objects: the metric that ranks trials, the parameter space, how many
trials there are and how many run at once."""

from __future__ import annotations

import itertools
from typing import Any

from pydantic import ValidationError

from moco_core.config import ConfigError, ExperimentConfig, TuneConfig
from moco_core.data import Partition
from moco_core.errors import UserError
from moco_core.monitor import can_monitor, monitor_metric
from moco_core.pipeline import check_partition_fits


class SweepError(UserError, RuntimeError):
    """A sweep could not start or finish; the message says why and what to do."""


def default_metric(cfg: ExperimentConfig, parts: dict) -> str:
    """``tune.metric``, else ``eval/knn_top1`` (multi-class) or ``eval/knn_auroc`` (binary, multi-label)."""
    usable = can_monitor(parts)
    metric = cfg.tune.metric if cfg.tune else None
    if metric is None:
        if not usable:
            raise SweepError(
                f"{cfg.data.root} has no labelled val partition, so the kNN monitor cannot rank trials: "
                "add val.csv with labels, or set tune.metric: train/loss (only comparable at equal T and K)"
            )
        return monitor_metric(parts["train"])
    if metric.startswith("eval/"):
        kind = parts["train"].label_kind if usable else "none"
        expected = monitor_metric(parts["train"]) if usable else "eval/knn_auroc"
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
            space[key] = (
                tune.grid_search(dim.values) if tune_cfg.search == "grid" else tune.choice(dim.values)
            )
        elif dim.uniform is not None:
            space[key] = tune.uniform(*dim.uniform)
        elif dim.loguniform is not None:
            space[key] = tune.loguniform(*dim.loguniform)
        elif dim.randint is not None:
            space[key] = tune.randint(dim.randint[0], dim.randint[1] + 1)
        elif dim.lograndint is not None:
            space[key] = tune.lograndint(dim.lograndint[0], dim.lograndint[1] + 1)
    return space


def check_trials_fit(cfg: ExperimentConfig, train: Partition) -> None:
    """Every combination of the space's listed values (and range ends) makes a valid trial that fits
    ``train`` (a swept batch, K or mechanism included), before Ray starts."""
    assert cfg.tune is not None
    dims = cfg.tune.space.dims()
    for combo in itertools.product(*(d.probes() for d in dims.values())):
        values = dict(zip(dims, combo, strict=True))
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        try:
            check_partition_fits(cfg.trial(values), train)
        except ValidationError as e:
            reasons = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
            raise SweepError(f"the trial {shown} is not a valid experiment: {reasons}") from None
        except ConfigError as e:
            raise SweepError(f"the trial {shown}: {e}") from None


def trial_plan(tune_cfg: TuneConfig) -> str:
    """The line ``moco tune`` prints before the sweep starts: how many trials, and why that many."""
    dims = tune_cfg.space.dims()
    n, samples = tune_cfg.trial_count(), tune_cfg.num_samples
    head = f"sweep of {n} trial{'s' * (n != 1)}"
    if tune_cfg.search == "random":
        return f"{head}: {samples} random draw{'s' * (samples != 1)} of {', '.join(dims)}"
    sizes = " x ".join(str(len(d.values or ())) for d in dims.values())
    line = f"{head}: the {n // samples}-point grid of {' x '.join(dims)} ({sizes})"
    return line + (f", repeated {samples} times (tune.num_samples)" if samples > 1 else "")


def default_concurrency(cfg: ExperimentConfig) -> int:
    """As many trials as the cluster's CPUs (and GPUs) hold at once, at least one."""
    import ray

    total = ray.cluster_resources()
    n = int(total.get("CPU", 1) // (cfg.scaling.workers * cfg.scaling.cpus_per_worker))
    if cfg.scaling.use_gpu:
        n = min(n, int(total.get("GPU", 0) // cfg.scaling.workers))
    return max(1, n)


__all__ = [
    "SweepError",
    "default_metric",
    "param_space",
    "check_trials_fit",
    "trial_plan",
    "default_concurrency",
]
