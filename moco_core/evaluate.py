"""Evaluation of frozen features: the kNN monitor (Wu et al., 2018), top-1 accuracy and AUROC."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@torch.no_grad()
def extract_features(
    backbone: nn.Module, batches: Iterable, device: torch.device | str = "cpu", channels_last: bool = False
) -> torch.Tensor:
    """L2-normalised backbone features (N x D, float32, on CPU) of ``(image, index)`` batches, in order."""
    was_training = backbone.training
    backbone.eval()
    feats = []
    for images, _ in batches:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        feats.append(F.normalize(backbone(images).float(), dim=1).cpu())
    backbone.train(was_training)
    return torch.cat(feats)


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
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, query.shape[0], chunk):
        sim = query[start : start + chunk] @ bank.t()  # m x N
        top_sim, top_idx = sim.topk(k, dim=1)  # m x k
        w = (top_sim / t).exp()  # m x k
        votes = (w.unsqueeze(-1) * bank_targets[top_idx]).sum(dim=1)  # m x C
        out.append(votes / w.sum(dim=1, keepdim=True))
    return torch.cat(out)


def top1(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of rows whose arg-max equals the integer target."""
    return float((scores.argmax(dim=1) == targets).float().mean())


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve for one binary label (Mann-Whitney U, ties counted half).

    Returns NaN when only one class is present.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def mean_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean AUROC over the label columns that have both classes (NaN if none)."""
    vals = [auroc(scores[:, j], labels[:, j]) for j in range(labels.shape[1])]
    vals = [v for v in vals if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


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
    bank_targets = as_score_targets(train_targets, label_kind, num_classes)
    scores = knn_scores(test_feats, train_feats, bank_targets, k=k, t=t)
    if label_kind == "multiclass":
        return "knn_top1", top1(scores, torch.as_tensor(np.asarray(test_targets)).long())
    if label_kind in ("binary", "multilabel"):
        labels = np.asarray(test_targets).reshape(len(test_targets), -1)
        return "knn_auroc", mean_auroc(scores.numpy(), labels)
    raise ValueError(f"kNN evaluation needs labels; label kind is {label_kind!r}")
