"""The momentum (exponential moving average) update of a key encoder toward the query encoder."""

from __future__ import annotations

import copy

import torch
from torch import nn


def key_encoder(encoder_q: nn.Module) -> nn.Module:
    """The key encoder of ``encoder_q``: a copy with the same weights and no gradients, moved only by
    :func:`momentum_update`."""
    encoder_k = copy.deepcopy(encoder_q)
    encoder_k.requires_grad_(False)
    return encoder_k


@torch.no_grad()
def momentum_update(target: list[torch.Tensor], online: list[torch.Tensor], m: float) -> None:
    """``target <- m * target + (1 - m) * online`` with foreach ops (one kernel per op, not per tensor)."""
    torch._foreach_mul_(target, m)
    torch._foreach_add_(target, online, alpha=1.0 - m)


__all__ = ["key_encoder", "momentum_update"]
