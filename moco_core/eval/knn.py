"""The weighted kNN classifier of InstDisc (Wu et al., 2018) on frozen features."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from .metrics import metric_name, task_score


def knn_scores(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_targets: torch.Tensor,
    k: int = 200,
    t: float = 0.1,
    chunk: int = 1024,
) -> torch.Tensor:
    """Weighted kNN votes (InstDisc): each of the k nearest bank items votes ``exp(sim / t)``.

    Args:
        query: M x D unit features.
        bank: N x D unit features.
        bank_targets: N x C one-hot (multi-class) or 0/1 (binary, multi-label) float targets.

    Returns:
        M x C scores in [0, 1]: the normalised vote mass per class or label.
    """
    top_sim, top_idx = nearest_neighbours(query, bank, k, chunk)  # M x k
    w = (top_sim / t).exp()  # M x k
    votes = (w.unsqueeze(-1) * bank_targets[top_idx]).sum(dim=1)  # M x C
    return votes / w.sum(dim=1, keepdim=True)


def nearest_neighbours(
    query: torch.Tensor, bank: torch.Tensor, k: int, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities and indices (both M x k, most similar first) of the k nearest bank items.

    ``query`` (M x D) and ``bank`` (N x D) are unit features; k is capped at N.
    """
    k = min(k, bank.shape[0])
    sims, idxs = [], []
    for start in range(0, query.shape[0], chunk):
        sim = query[start : start + chunk] @ bank.t()  # m x N
        top_sim, top_idx = sim.topk(k, dim=1)  # m x k
        sims.append(top_sim)
        idxs.append(top_idx)
    return torch.cat(sims), torch.cat(idxs)


def as_score_targets(targets: np.ndarray, label_kind: str, num_classes: int) -> torch.Tensor:
    """Targets as an N x C float matrix: one-hot for multi-class, as is for binary/multi-label."""
    t = torch.as_tensor(np.asarray(targets))
    if label_kind == "multiclass":
        return F.one_hot(t.long(), num_classes).float()
    return t.float().reshape(t.shape[0], -1)


def knn_metric(
    train_feats: torch.Tensor,
    train_targets: np.ndarray,
    test_feats: torch.Tensor,
    test_targets: np.ndarray,
    label_kind: str,
    num_classes: int,
    k: int = 200,
    t: float = 0.1,
) -> tuple[str, float]:
    """``("knn_top1", acc)`` for multi-class, ``("knn_auroc", mean AUROC)`` for binary/multi-label."""
    name = f"knn_{metric_name(label_kind)}"
    bank_targets = as_score_targets(train_targets, label_kind, num_classes)
    scores = knn_scores(test_feats, train_feats, bank_targets, k=k, t=t)
    return name, task_score(scores.numpy(), np.asarray(test_targets), label_kind)
