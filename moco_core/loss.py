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
        N x (1 + K) logits divided by T.
    """
    l_pos = (q * k).sum(dim=1, keepdim=True)  # N x 1
    l_neg = q @ queue.to(q.dtype)  # N x K
    return torch.cat([l_pos, l_neg], dim=1) / temperature  # N x (1+K)


def info_nce(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with the positive at index 0 of every row."""
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), labels)
