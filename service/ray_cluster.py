"""The Ray cluster a command runs on: the one named by ``--ray-address`` or ``RAY_ADDRESS``, else a new
local cluster whose dashboard listens on loopback only; and whether it can hold a run's workers."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any

from moco_core.config import ScalingConfig
from moco_core.errors import UserError


class ResourcesError(UserError, RuntimeError):
    """The cluster cannot hold the run's workers; the message says what was asked and what it has."""


def ensure_ray(address: str | None = None) -> bool:
    """Connect to (or start) the cluster once per process; ``True`` when it is named by an address
    (a cluster that may add nodes), ``False`` for this machine's own."""
    address = address or os.environ.get("RAY_ADDRESS")
    before_ray_import(address)
    import ray

    if ray.is_initialized():
        return bool(address)
    if address:
        ray.init(address=address, log_to_driver=True)
    else:  # a local cluster; its dashboard (needed by Ray Train's state API) listens on loopback only
        ray.init(dashboard_host="127.0.0.1", log_to_driver=True, logging_level="WARNING")
    return bool(address)


def before_ray_import(address: str | None) -> None:
    """What must be chosen before Ray is imported: a local cluster's defaults, unless ``address`` (or
    ``RAY_ADDRESS``) names a cluster. Commands whose modules import Ray call it first."""
    if not (address or os.environ.get("RAY_ADDRESS")):
        local_cluster_defaults()


def local_cluster_defaults() -> None:
    """For a cluster of this machine alone: token authentication, as Ray defaults to for a local
    cluster, but chosen (so that Ray does not warn that it chose it; Ray reads the mode once, when
    it is imported: left to Ray if it was imported already), and no preemption watcher (it watches
    for cloud nodes being taken back; Ray Train passes the setting on to its controller)."""
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def check_resources(scaling: ScalingConfig, remote: bool) -> None:
    """Fail before Ray Train starts when the cluster's nodes cannot hold ``scaling.workers`` workers of
    ``scaling.cpus_per_worker`` CPUs (and one GPU each with ``scaling.use_gpu``): Ray Train would wait
    for them forever. A remote cluster may still add nodes, so it gets ``scaling.wait_for_resources_s``."""
    import ray

    deadline = time.monotonic() + (scaling.wait_for_resources_s if remote else 0.0)
    while True:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        if workers_that_fit(nodes, scaling) >= scaling.workers:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
    gpu = ", 1 GPU" if scaling.use_gpu else ""
    have = f"{len(nodes)} node(s) with {describe(nodes)}"
    fix = (
        "set scaling.use_gpu=false (--set scaling.use_gpu=false), or run on a cluster with GPUs"
        if scaling.use_gpu and not any(n.get("GPU") for n in nodes)
        else "lower scaling.workers or scaling.cpus_per_worker, or add nodes"
    )
    waited = f" after waiting {scaling.wait_for_resources_s:.0f} s" if remote else ""
    raise ResourcesError(
        f"scaling.workers={scaling.workers} workers of {scaling.cpus_per_worker} CPU{gpu} each "
        f"(scaling.use_gpu={str(scaling.use_gpu).lower()}) do not fit the "
        f"{'Ray cluster' if remote else 'local Ray cluster'}{waited}: it has {have}; {fix}"
    )


def workers_that_fit(nodes: list[dict[str, float]], scaling: ScalingConfig) -> int:
    """How many workers the nodes hold at once (a worker lives on one node)."""
    total = 0
    for n in nodes:
        fit = n.get("CPU", 0.0) // scaling.cpus_per_worker
        if scaling.use_gpu:
            fit = min(fit, n.get("GPU", 0.0) // 1)
        total += int(fit) if math.isfinite(fit) else 0
    return total


def describe(nodes: list[dict[str, float]]) -> str:
    cpus = sum(n.get("CPU", 0.0) for n in nodes)
    gpus = sum(n.get("GPU", 0.0) for n in nodes)
    return f"{cpus:g} CPUs and " + (f"{gpus:g} GPUs" if gpus else "no GPU")


def train_logging() -> Any:
    """Ray Train's own lines (worker group started, process group set up, every report) at INFO only
    with ``moco -v``; its warnings and errors always show."""
    from ray.train import LoggingConfig

    verbose = logging.getLogger().isEnabledFor(logging.INFO)
    return LoggingConfig(log_level="INFO" if verbose else "WARNING")


def level_path_named_train_loggers(level: str) -> None:
    """On a worker: the level ``LoggingConfig`` gives Ray Train's loggers, for those Ray names by
    their file path (``logging.getLogger(__file__)``: "Reporting training result ..." at every report),
    which its filter, matching names that start with ``ray.train``, misses."""
    for name in list(logging.root.manager.loggerDict):
        if "/ray/train/" in name:
            logging.getLogger(name).setLevel(level)


__all__ = [
    "ResourcesError",
    "ensure_ray",
    "before_ray_import",
    "check_resources",
    "workers_that_fit",
    "train_logging",
    "level_path_named_train_loggers",
]
