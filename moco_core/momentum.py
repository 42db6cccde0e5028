"""The momentum (exponential moving average) update of a key encoder toward the query encoder."""

from __future__ import annotations

import torch


@torch.no_grad()
def momentum_update(target: list[torch.Tensor], online: list[torch.Tensor], m: float) -> None:
    """``target <- m * target + (1 - m) * online`` with foreach ops (one kernel per op, not per tensor)."""
    torch._foreach_mul_(target, m)
    torch._foreach_add_(target, online, alpha=1.0 - m)


__all__ = ["momentum_update"]
