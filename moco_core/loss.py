"""InfoNCE over a queue of negatives (Oord et al., 2018; He et al., 2020, Eq. 1)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def moco_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits with the positive in column 0.

    Args:
        q: queries, N x C, L2-normalised.
        k: positive keys, N x C, L2-normalised, no gradient.
        queue: negatives, C x K (``KeyQueue.keys``; used as is, never cloned).
        temperature: T.

    Returns:
        N x (1 + K) logits divided by T, in fp32 whatever autocast is active: a bf16 ``q @ queue``
        would round every negative's similarity (and cast a fresh copy of the queue each step).
    """
    with torch.autocast(q.device.type, enabled=False):
        q = q.float()  # N x C
        l_pos = (q * k.float()).sum(dim=1, keepdim=True)  # N x 1
        l_neg = q @ queue.float()  # N x K (the fp32 queue itself: .float() is a no-op, not a copy)
        return torch.cat([l_pos, l_neg], dim=1) / temperature  # N x (1+K)


def positive_first(
    sim: torch.Tensor, positive: torch.Tensor, drop: torch.Tensor | None = None
) -> torch.Tensor:
    """Similarities rearranged as InfoNCE logits: row i's column ``positive[i]`` first, then every other
    column in order, leaving out column ``drop[i]`` (an anchor's own entry) where given.

    Args:
        sim: R x M similarities, one row per query.
        positive: R column indices, each row's positive.
        drop: R column indices to leave out, or ``None``.

    Returns:
        R x (M - 1) logits (R x (M - 2) with ``drop``), the positive in column 0.
    """
    rows = torch.arange(sim.shape[0], device=sim.device)
    negative = torch.ones_like(sim, dtype=torch.bool)
    negative[rows, positive] = False
    if drop is not None:
        negative[rows, drop] = False
    return torch.cat([sim[rows, positive].unsqueeze(1), sim[negative].view(sim.shape[0], -1)], dim=1)


def info_nce(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with the positive at index 0 of every row."""
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), labels)
