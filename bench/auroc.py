"""Our AUROC (rank-based Mann-Whitney U) against scikit-learn's roc_auc_score: the same value, and
the time of one call at the sizes of our test sets (the bootstrap makes a thousand of them).

    .venv/bin/python bench/auroc.py
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.metrics import roc_auc_score

from moco_core.eval.metrics import auroc


def per_call(fn, *args, repeat: int = 30) -> float:
    fn(*args)  # warm
    t = time.perf_counter()
    for _ in range(repeat):
        fn(*args)
    return (time.perf_counter() - t) / repeat


def main() -> None:
    rng = np.random.default_rng(0)
    print("n        ours (ms)  sklearn (ms)  |difference|")
    for n in (1_000, 20_000, 200_000):
        scores, labels = rng.random(n).round(3), rng.random(n) < 0.3  # ties, as a kNN vote gives
        ours, theirs = per_call(auroc, scores, labels), per_call(roc_auc_score, labels, scores)
        diff = abs(auroc(scores, labels) - roc_auc_score(labels, scores))
        print(f"{n:<8} {ours * 1e3:9.2f}  {theirs * 1e3:12.2f}  {diff:.1e}")


if __name__ == "__main__":
    main()
