"""Learning-rate and momentum schedules, as pure functions of the step."""

from __future__ import annotations

import math

from .config import MocoConfig, OptimConfig


def lr_factor(step: int, steps_per_epoch: int, cfg: OptimConfig) -> float:
    """Multiplier of ``cfg.lr`` at optimizer step ``step`` (0-based), with linear warm-up."""
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        epoch = step // steps_per_epoch
        return 0.1 ** sum(epoch >= s for s in cfg.lr_steps)
    # cosine (MoCo v2): from 1 at the end of warm-up to 0 at the last step
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def momentum_at(step: int, total_steps: int, cfg: MocoConfig) -> float:
    """Key-encoder momentum m at ``step``: constant, or cosine from ``cfg.momentum`` up to 1 (BYOL)."""
    if cfg.momentum_schedule == "constant":
        return cfg.momentum
    progress = min(1.0, step / max(1, total_steps))
    return 1.0 - (1.0 - cfg.momentum) * 0.5 * (1.0 + math.cos(math.pi * progress))
