"""The function every Ray Train worker runs: rebuild the config, build the ``moco_core`` objects,
restore the latest checkpoint if any, and ``engine.fit`` with the hooks of :mod:`.epochs`."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from moco_core.checkpoint import restore as restore_checkpoint
from moco_core.config import ExperimentConfig
from moco_core.engine import TrainState, build_train_state, fit
from moco_core.pipeline import pretrain_loader, steps_per_epoch

from ..ray_cluster import level_path_named_train_loggers
from .epochs import EpochHooks
from .inputs import read_partitions

log = logging.getLogger(__name__)


def train_fn_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker. ``loop_config`` is plain data: the config as a dict, the MLflow
    run and tracking URI, and the driver's progress queue."""
    import ray.train
    import ray.train.torch

    level_path_named_train_loggers(loop_config.get("log_level", "WARNING"))
    os.environ.update(loop_config.get("mlflow_env", {}))  # the driver's MLflow client settings
    cfg = ExperimentConfig.model_validate(loop_config["experiment"])  # validated again on the worker
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, cfg.scaling.cpus_per_worker))
    else:
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest convolutions once

    parts = read_partitions(cfg, check_files=False)
    loader = pretrain_loader(cfg, parts["train"], rank, world, device)
    train = parts["train"]
    state = build_train_state(cfg, steps_per_epoch(len(train), cfg), world, device, n_images=len(train))
    resumed = restore(state)
    hooks = EpochHooks(cfg, state, parts, loop_config, rank, world, device)
    if resumed:
        hooks.resumed()
    forward = wrap_model(state, cfg, world)
    with system_metrics(cfg, loop_config, rank, resumed):
        fit(
            state,
            loader,
            cfg,
            device,
            forward=forward,
            on_step=hooks.on_step,
            on_epoch_end=hooks.on_epoch_end,
            world_size=world,
        )
    check_shared_buffers(state)
    if not hooks.close():
        log.error("some metrics could not be sent to MLflow %s", loop_config["tracking_uri"])


@contextlib.contextmanager
def system_metrics(
    cfg: ExperimentConfig, loop_config: dict[str, Any], rank: int, resumed: bool
) -> Iterator[None]:
    """With ``tracking.system_metrics``: MLflow's system-metrics monitor of this worker's machine (CPU,
    memory, disk, network; GPU utilisation and memory where ``nvidia-ml-py`` finds one) while it
    trains, as ``system/worker_<rank>/...`` in the run."""
    if not cfg.tracking.system_metrics:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        loop_config["mlflow_run_id"],
        sampling_interval=cfg.tracking.system_metrics_every_s,
        node_id=f"worker_{rank}",
        tracking_uri=loop_config["tracking_uri"],
        resume_logging=resumed,
    )
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def restore(state: TrainState) -> bool:
    """Continue from Ray Train's latest checkpoint, if there is one (a restarted worker, or a resumed
    run). The checkpoint is read onto the CPU; ``load_state_dict`` places each tensor."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return False
    with ckpt.as_directory() as d:
        restore_checkpoint(state, d)
    return True


def wrap_model(state: TrainState, cfg: ExperimentConfig, world: int) -> torch.nn.Module:
    """What the forward pass runs through: DDP when distributed, ``torch.compile`` when asked."""
    import ray.train.torch

    if world > 1 and cfg.moco.mechanism == "moco_v3" and next(state.model.parameters()).is_cuda:
        # MoCo v3's heads normalise over the global batch, as the reference (SyncBN has no CPU kernel).
        # The converted layers keep the same parameter and buffer tensors: the optimizer is unaffected.
        state.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(state.model)
    forward: torch.nn.Module = state.model
    if world > 1:
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*")  # still the right knob here
        # Buffers (queue, BN statistics of encoder_k) are kept identical by construction; don't re-broadcast.
        forward = ray.train.torch.prepare_model(
            state.model, move_to_device=False, parallel_strategy_kwargs={"broadcast_buffers": False}
        )
    if cfg.run.compile:
        forward = torch.compile(forward)
    return forward


def check_shared_buffers(state: TrainState) -> None:
    """At the end of a distributed run, every rank's queue (keys and pointer) or memory bank equals
    rank 0's: the invariant the all-gather before each update keeps. One broadcast of each; raises if it
    broke."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() < 2:
        return
    for mine in state.model.shared_buffers():
        ref = mine.detach().clone()
        dist.broadcast(ref, src=0)
        if not torch.equal(mine, ref):
            raise RuntimeError(
                f"rank {dist.get_rank()}: the {state.model.__class__.__name__} model's shared state "
                "(queue or bank) differs from rank 0's"
            )


__all__ = ["train_fn_per_worker"]
