"""Label fractions: a stratified, seeded share of the train labels.

A *label fraction* f keeps, from the train partition, a seeded random ``round(f * n)`` of the images of
every class (multi-class), of each value of a binary label, or of each combination of labels
(multi-label); val and test stay whole. A fraction that would leave a class (or a label value) with no
example is an error, never a silent change of the task.
"""

from __future__ import annotations

import math

import numpy as np

from ..data import Partition
from .task import EvaluationError


def _strata(partition: Partition) -> tuple[np.ndarray, list[str]]:
    """One integer stratum per row and a display name per stratum."""
    t = partition.targets
    if partition.label_kind == "multiclass":
        return t, list(partition.classes)
    patterns, strata = np.unique(t.astype(np.int64), axis=0, return_inverse=True)
    names = [", ".join(f"{n}={v}" for n, v in zip(partition.label_names, row)) for row in patterns]
    return strata.reshape(-1), names


def label_subset(partition: Partition, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted row indices of a stratified, seeded ``fraction`` of ``partition``.

    Each stratum (class; binary value; combination of labels) keeps ``round(fraction * n)`` of its
    ``n`` rows, drawn with ``seed``. Raises ``EvaluationError`` when a class, a binary value, or any
    positive (or negative) of a multi-label column would be left with no example.
    """
    if not (0.0 < fraction <= 1.0) or math.isnan(fraction):
        raise EvaluationError(f"label fraction {fraction} is not in (0, 1]; e.g. 0.01, 0.1 or 1.0")
    n = len(partition)
    if fraction == 1.0:
        return np.arange(n)
    strata, names = _strata(partition)
    rng = np.random.default_rng(seed)
    keep = []
    for s in range(len(names)):
        rows = np.flatnonzero(strata == s)
        k = int(math.floor(fraction * len(rows) + 0.5))
        keep.append(rng.permutation(rows)[:k])
    idx = np.sort(np.concatenate(keep)) if keep else np.arange(0)

    def fail(what: str, count: int) -> EvaluationError:
        need = math.ceil(0.5 / count * 1000) / 1000  # smallest fraction with round(f * count) >= 1
        return EvaluationError(
            f"label fraction {fraction} leaves {what} with no example in train: it has {count} "
            f"(round({fraction} x {count}) = 0). Use a fraction of at least {need:g}, or drop that class"
        )

    t = partition.targets
    if partition.label_kind == "multiclass":
        for c, name in enumerate(partition.classes):
            count = int((t == c).sum())
            if count and not (t[idx] == c).any():
                raise fail(f"class {name!r}", count)
    else:
        kept = t[idx]
        for j, label in enumerate(partition.label_names):
            for value in (1.0, 0.0):
                count = int((t[:, j] == value).sum())
                if count and not (kept[:, j] == value).any():
                    raise fail(f"label {label!r} = {int(value)}", count)
    return idx
