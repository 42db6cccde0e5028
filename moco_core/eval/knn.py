"""The weighted kNN classifier of InstDisc (Wu et al., 2018) on frozen features.

Memory stays bounded by the chunk of queries: a multi-class vote scatters each neighbour's weight onto
its integer label (no one-hot N x C bank, no M x k x C tensor), so ImageNet's 1,000 classes cost what
ten do.
"""

from __future__ import annotations

import numpy as np
import torch

from .metrics import metric_name, task_score


def knn_scores(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_targets: torch.Tensor,
    k: int = 200,
    t: float = 0.1,
    chunk: int = 1024,
    num_classes: int | None = None,
) -> torch.Tensor:
    """Weighted kNN votes (InstDisc): each of the k nearest bank items votes ``exp(sim / t)``.

    Args:
        query: M x D unit features.
        bank: N x D unit features (on the same device as ``query``).
        bank_targets: N integer class labels (multi-class, with ``num_classes``), or N x L 0/1 targets
            (binary, multi-label).
        chunk: queries voted at once.

    Returns:
        M x C scores in [0, 1] on the CPU: the normalised vote mass per class or label.
    """
    multiclass = bank_targets.ndim == 1
    if multiclass and num_classes is None:
        raise ValueError("integer bank targets need num_classes")
    targets = bank_targets.to(bank.device)
    targets = targets.long() if multiclass else targets.float().reshape(len(targets), -1)
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, query.shape[0], chunk):
        top_sim, top_idx = (query[start : start + chunk] @ bank.t()).topk(k, dim=1)  # m x k
        w = (top_sim.float() / t).exp()  # m x k
        if multiclass:
            votes = torch.zeros(w.shape[0], num_classes, device=w.device)  # m x C
            votes.scatter_add_(1, targets[top_idx], w)
        else:
            votes = torch.einsum("mk,mkl->ml", w, targets[top_idx])  # m x L
        out.append((votes / w.sum(dim=1, keepdim=True)).cpu())
    return torch.cat(out)


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


def vote_targets(targets: np.ndarray, label_kind: str) -> torch.Tensor:
    """What the vote counts: integer labels (multi-class), or N x L float 0/1 targets."""
    t = torch.as_tensor(np.asarray(targets))
    if label_kind == "multiclass":
        return t.long()
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
    scores = knn_scores(
        test_feats, train_feats, vote_targets(train_targets, label_kind), k=k, t=t, num_classes=num_classes
    )
    return name, task_score(scores.numpy(), np.asarray(test_targets), label_kind)
