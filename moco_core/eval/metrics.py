"""The test metrics by label kind: top-1 accuracy (multi-class), AUROC per label and their mean
(binary, multi-label), ROC curves (scikit-learn's) and a BCa bootstrap interval."""

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
    """BCa bootstrap interval of :func:`task_score` (Efron's bias-corrected and accelerated interval,
    the default of ``scipy.stats.bootstrap``; tested to agree with it): the test set resampled with
    replacement ``n_boot`` times (seeded), resamples whose score is undefined (one class only) skipped.
    Ours, not scipy's, for its jackknife: scipy scores the N leave-one-out sets one by one, which at the
    25,000 images of an X-ray test set is 25,000 AUROCs per label; here they are one closed form."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    n = len(scores)
    if n_boot <= 0 or n < 2:
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
        jackknife = (correct.sum() - correct) / (n - 1)
    else:
        values = np.array(
            [
                task_score(scores[idx], targets[idx], label_kind)
                for idx in rng.integers(0, n, size=(n_boot, n))
            ]
        )
        scores, targets = scores.reshape(n, -1), targets.reshape(n, -1)
        jackknife = _nanmean_rows(
            np.stack([leave_one_out_auroc(scores[:, j], targets[:, j]) for j in range(targets.shape[1])], 1)
        )
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    lo, hi = _bca_levels(values, task_score(scores, targets, label_kind), jackknife, level)
    lo, hi = np.percentile(values, [100.0 * lo, 100.0 * hi])
    return float(lo), float(hi)


def leave_one_out_auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The AUROC of one binary label with each row left out in turn, in closed form from the ranks (a
    positive takes its pairs with every negative out of U, a negative its pairs with every positive);
    NaN where the row left out is its class's last member."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    pos = np.asarray(labels).astype(bool).reshape(-1)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    out = np.full(len(scores), np.nan)
    if n_pos == 0 or n_neg == 0:
        return out
    rank = _average_ranks(scores)  # among all rows
    u = rank[pos].sum() - n_pos * (n_pos + 1) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        negatives_below = rank[pos] - _average_ranks(scores[pos])  # ties counted half
        out[pos] = (u - negatives_below) / ((n_pos - 1) * n_neg)
        positives_above = n_pos - (rank[~pos] - _average_ranks(scores[~pos]))
        out[~pos] = (u - positives_above) / (n_pos * (n_neg - 1))
    out[~np.isfinite(out)] = np.nan
    return out


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    """Mean of each row over its defined entries (NaN where none is)."""
    defined = ~np.isnan(x)
    count = defined.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(defined, x, 0.0).sum(axis=1) / count, np.nan)


def _bca_levels(
    values: np.ndarray, estimate: float, jackknife: np.ndarray, level: float
) -> tuple[float, float]:
    """The quantile levels of the bootstrap distribution that bound the BCa interval: the bias
    correction z0 from where the estimate lies among the resampled values, the acceleration from the
    skew of the jackknife values (scipy.stats.bootstrap's formulas). A distribution without spread, or
    an estimate outside it, gives the plain percentile levels."""
    from scipy.special import ndtr, ndtri

    tail = (1.0 - level) / 2.0
    below = ((values < estimate).sum() + (values <= estimate).sum()) / (2.0 * len(values))
    if not 0.0 < below < 1.0 or np.ptp(values) == 0.0:
        return tail, 1.0 - tail
    z0 = ndtri(below)
    spread = np.nanmean(jackknife) - jackknife[~np.isnan(jackknife)]
    denominator = 6.0 * (spread**2).sum() ** 1.5
    accel = (spread**3).sum() / denominator if denominator > 0 else 0.0
    lo, hi = (z0 + (z0 + z) / (1.0 - accel * (z0 + z)) for z in (ndtri(tail), -ndtri(tail)))
    return float(ndtr(lo)), float(ndtr(hi))
