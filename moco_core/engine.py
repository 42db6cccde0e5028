"""Training: one step, one epoch, and the epoch loop. Objects in, metric dicts out; no I/O policy.

The Ray Train worker (``service.pretrain.worker``) and the single-process tests share this loop; they differ
only in the hooks they pass (checkpoint, report, log).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from .config import ConfigError, ExperimentConfig, OptimConfig
from .errors import UserError
from .loss import info_nce
from .model import ContrastModel, MoCo, MoCoV3, build_moco
from .precision import autocast, grad_scaler
from .schedules import lr_factor, momentum_at

StepHook = Callable[[dict[str, float]], None]


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN or infinite; training stops and the last checkpoint stays as it was."""


@dataclass
class TrainState:
    """Everything that must survive a restart for training to continue exactly."""

    model: ContrastModel
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    steps_per_epoch: int
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    scaler: torch.amp.GradScaler | None = None  # fp16 only

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),  # encoder_q, encoder_k, heads, queue + pointer (or bank)
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "steps_per_epoch": self.steps_per_epoch,
            "epoch": self.epoch,
            "step": self.step,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(),
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if int(d["steps_per_epoch"]) != self.steps_per_epoch:
            raise ConfigError(
                f"the checkpoint was written with {d['steps_per_epoch']} steps per epoch and this run has "
                f"{self.steps_per_epoch}: the training data, optim.batch_size, scaling.workers or "
                "run.max_steps_per_epoch changed since; resume with the run's own config and data"
            )
        self.model.load_state_dict(d["model"])
        self.optimizer.load_state_dict(d["optimizer"])
        self.scheduler.load_state_dict(d["scheduler"])
        self.epoch, self.step = int(d["epoch"]), int(d["step"])
        if self.scaler is not None and d.get("scaler"):
            self.scaler.load_state_dict(d["scaler"])
        set_rng_state(d["rng"])


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain values, so checkpoints load with ``weights_only=True``."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.random.get_rng_state(),
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.random.set_rng_state(state["torch"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_train_state(
    cfg: ExperimentConfig,
    steps_per_epoch: int,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    n_images: int | None = None,
) -> TrainState:
    """A fresh model, the optimizer on what has gradients (the query encoder, MoCo v3's predictor; never
    a key encoder, a queue or a bank), and the per-step LR schedule. ``n_images`` (the training images)
    sizes a memory bank."""
    seed_everything(cfg.run.seed)
    model = build_moco(cfg, world_size, n_images).to(device)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg.optim)
    sched = LambdaLR(opt, lambda s: lr_factor(s, steps_per_epoch, cfg.optim))
    scaler = grad_scaler(torch.device(device), cfg.run.precision)
    return TrainState(
        model=model, optimizer=opt, scheduler=sched, steps_per_epoch=steps_per_epoch, scaler=scaler
    )


def make_optimizer(params: list[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD with momentum (MoCo v1/v2) or AdamW (MoCo v3's ViTs), at the schedule's peak LR."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.peak_lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.peak_lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)


def train_step(
    forward: nn.Module,
    state: TrainState,
    im_q: torch.Tensor,
    im_k: torch.Tensor,
    cfg: ExperimentConfig,
    device: torch.device,
    index: torch.Tensor | None = None,
) -> dict[str, float]:
    """One step: loss, backward, SGD step, LR step, then the model's ``after_step`` (MoCo: enqueue and
    momentum update; memory bank: the batch's entries). Returns step metrics.

    ``forward`` is ``state.model`` or a wrapper of it (DistributedDataParallel, torch.compile);
    ``index`` holds the batch's rows in the training partition (the memory bank's entries).
    """
    total_steps = cfg.optim.epochs * state.steps_per_epoch
    m = momentum_at(state.step, total_steps, cfg.moco)
    lr = state.optimizer.param_groups[0]["lr"]
    with autocast(device, cfg.run.precision):
        out = forward(im_q, im_k, index)
        loss = info_nce(out.logits) * out.loss_scale
    with torch.no_grad():
        t = cfg.moco.temperature
        neg = out.logits[:, 1:].float()
        shown = neg.isfinite()  # a memory bank leaves a query's own entry out as -inf
        neg_mean = torch.where(shown, neg, 0.0).sum() / shown.sum().clamp(min=1)
        stats = torch.stack([loss.detach(), out.logits[:, 0].float().mean() * t, neg_mean * t])
    state.optimizer.zero_grad(set_to_none=True)
    (state.scaler.scale(loss) if state.scaler is not None else loss).backward()
    # One host sync per step, once the backward pass is queued; nothing has been updated yet.
    values = stats.tolist()
    if not all(np.isfinite(values)):
        raise NonFiniteLossError(
            f"non-finite loss {values[0]} at step {state.step} (epoch {state.epoch}); lower optim.lr or "
            "check the data; the last checkpoint is kept"
        )
    if state.scaler is not None:  # fp16: a step whose gradients overflowed is skipped, the scale lowered
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        state.optimizer.step()
    state.scheduler.step()
    state.model.after_step(out, m)
    state.step += 1
    metrics = {
        "train/loss": values[0],
        "train/pos_logit": values[1],  # mean cosine of a query and its positive (before 1/T)
        "train/neg_logit": values[2],  # mean cosine of a query and its negatives (before 1/T)
        "train/lr": lr,
    }
    if isinstance(state.model, MoCo | MoCoV3):  # the models with a key encoder
        metrics["train/momentum"] = m
    return metrics


def train_epoch(
    forward: nn.Module,
    state: TrainState,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    cfg: ExperimentConfig,
    device: torch.device,
    on_step: StepHook | None = None,
    world_size: int = 1,
    done_steps: int = 0,
) -> dict[str, float]:
    """One epoch (at most ``state.steps_per_epoch`` steps, ``done_steps`` of them already trained before a
    mid-epoch checkpoint). Returns the mean metrics of the steps trained here."""
    forward.train()
    sums: dict[str, float] = {}
    n = done_steps
    images = 0
    t0 = time.perf_counter()
    t_last = t0
    for im_q, im_k, index in batches:  # the two views and the images' rows
        if n >= state.steps_per_epoch:
            break
        im_q = im_q.to(device, non_blocking=True)
        im_k = im_k.to(device, non_blocking=True)
        if cfg.run.channels_last:
            im_q = im_q.contiguous(memory_format=torch.channels_last)
            im_k = im_k.contiguous(memory_format=torch.channels_last)
        metrics = train_step(forward, state, im_q, im_k, cfg, device, index.to(device))
        now = time.perf_counter()
        batch = im_q.shape[0] * world_size
        metrics["train/images_per_s"] = batch / max(now - t_last, 1e-9)
        t_last = now
        images += batch
        n += 1
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v
        if on_step is not None:
            on_step(dict(metrics, step=state.step, epoch=state.epoch, batch=n))
    trained = n - done_steps
    if trained == 0:
        raise RuntimeError("the data loader yielded no batch; is the partition smaller than one batch?")
    out = {k: v / trained for k, v in sums.items()}
    out["train/images_per_s"] = images / max(time.perf_counter() - t0, 1e-9)
    out["train/lr"] = state.optimizer.param_groups[0]["lr"]
    state.epoch += 1
    return out


def set_loader_epoch(loader: Any, epoch: int, done_steps: int = 0) -> None:
    """Point the loader's sampler at ``epoch``, past the ``done_steps`` batches already trained on."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch, start=done_steps * (loader.batch_size or 1))
    elif done_steps:
        raise ValueError("resuming mid-epoch needs a sampler that can start at an offset (ShardSampler)")


def fit(
    state: TrainState,
    loader: Any,
    cfg: ExperimentConfig,
    device: torch.device | str = "cpu",
    forward: nn.Module | None = None,
    on_step: StepHook | None = None,
    on_epoch_end: Callable[[TrainState, dict[str, float]], None] | None = None,
    world_size: int = 1,
    until_epoch: int | None = None,
) -> list[dict[str, float]]:
    """Train from ``state.epoch`` to ``cfg.optim.epochs`` (or ``until_epoch``); returns epoch metrics."""
    device = torch.device(device)
    forward = forward or state.model
    history = []
    last = cfg.optim.epochs if until_epoch is None else min(until_epoch, cfg.optim.epochs)
    while state.epoch < last:
        done = state.step - state.epoch * state.steps_per_epoch  # > 0 after a mid-epoch checkpoint
        set_loader_epoch(loader, state.epoch, done)
        metrics = train_epoch(forward, state, loader, cfg, device, on_step, world_size, done)
        metrics["epoch"] = state.epoch
        if on_epoch_end is not None:
            on_epoch_end(state, metrics)
        history.append(metrics)
    return history
