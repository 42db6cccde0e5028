"""The test metrics by label kind: top-1 accuracy (multi-class), AUROC per label and their mean
(binary, multi-label), ROC curves (scikit-learn's) and a percentile bootstrap interval."""

from __future__ import annotations

import numpy as np
import torch


def top1(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of rows whose arg-max equals the integer target."""
    return float((scores.argmax(dim=1) == targets).float().mean())


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, ties sharing their average rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # 1-based rank of the last member of each group
    return (ends - (counts - 1) / 2.0)[inverse]


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve for one binary label (Mann-Whitney U, ties counted half); NaN when
    only one class is present. Our own, not ``sklearn.metrics.roc_auc_score`` (tested equal): 5x
    faster at 20,000 scores, and the bootstrap computes it a thousand times (bench/RESULTS.md)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).astype(bool).reshape(-1)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    u = _average_ranks(scores)[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(false positive rate, true positive rate)`` at every distinct threshold, from (0, 0) to (1, 1)
    (``sklearn.metrics.roc_curve``, every threshold kept). The trapezoidal area under it equals
    :func:`auroc`."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).astype(bool).reshape(-1)
    fpr, tpr, _ = sk_roc_curve(labels, scores, drop_intermediate=False)
    return fpr, tpr


def mean_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean AUROC over the label columns that have both classes (NaN if none)."""
    vals = [v for v in per_label_auroc(scores, labels) if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def metric_name(label_kind: str) -> str:
    """The test metric of a label kind: ``"top1"`` (multi-class) or ``"auroc"`` (binary, multi-label:
    the mean over labels)."""
    if label_kind == "multiclass":
        return "top1"
    if label_kind in ("binary", "multilabel"):
        return "auroc"
    raise ValueError(f"evaluation needs labels; label kind is {label_kind!r}")


def task_score(scores: np.ndarray, targets: np.ndarray, label_kind: str) -> float:
    """Top-1 accuracy of N x C class scores against integer targets (multi-class), or the mean AUROC
    of N x L label scores against 0/1 targets (binary, multi-label)."""
    scores = np.asarray(scores)
    if metric_name(label_kind) == "top1":
        return float((scores.argmax(axis=1) == np.asarray(targets)).mean())
    return mean_auroc(scores.reshape(len(scores), -1), np.asarray(targets).reshape(len(scores), -1))


def per_label_auroc(scores: np.ndarray, labels: np.ndarray) -> list[float]:
    """AUROC of each label column (NaN where a column has a single class)."""
    scores = np.asarray(scores).reshape(len(scores), -1)
    labels = np.asarray(labels).reshape(len(labels), -1)
    return [auroc(scores[:, j], labels[:, j]) for j in range(labels.shape[1])]


def bootstrap_ci(
    scores: np.ndarray,
    targets: np.ndarray,
    label_kind: str,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`task_score`: the test set resampled with replacement
    ``n_boot`` times (seeded). Resamples whose score is undefined (one class only) are skipped."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    n = len(scores)
    if n_boot <= 0 or n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    if metric_name(label_kind) == "top1":
        correct = (scores.argmax(axis=1) == targets).astype(np.float64)  # N
        values = np.concatenate(
            [
                correct[rng.integers(0, n, size=(min(256, n_boot - i), n))].mean(axis=1)  # b
                for i in range(0, n_boot, 256)
            ]
        )
    else:
        values = np.array(
            [
                task_score(scores[idx], targets[idx], label_kind)
                for idx in rng.integers(0, n, size=(n_boot, n))
            ]
        )
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)
