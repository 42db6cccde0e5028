"""Plots as MLflow artifacts: matplotlib without a screen, and the curves of a training run.

The sweep's plots (:mod:`service.sweep.plots`) and the evaluation's (:mod:`service.evaluation.plots`)
draw with the same :func:`pyplot`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import tracking

RUN_CURVES = [  # metric -> file under plots/
    ("train/loss", "loss.png"),
    ("train/lr", "lr.png"),
    ("eval/knn_top1", "knn.png"),
    ("eval/knn_auroc", "knn.png"),
]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Lay out, write and close ``fig``; returns ``path``."""
    plt = pyplot()
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def log_run_plots(uri: str, run_id: str, out_dir: str | Path) -> list[Path]:
    """Loss, learning-rate and kNN curves of run ``run_id`` as PNG artifacts under ``plots/``."""
    plt = pyplot()
    store = tracking.client(uri)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    keys = list(store.get_run(run_id).data.metrics)
    for key, fname in RUN_CURVES:
        if key not in keys:
            continue
        hist = sorted(store.get_metric_history(run_id, key), key=lambda m: m.step)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([m.step for m in hist], [m.value for m in hist], marker="o" if len(hist) < 50 else None)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        path = save(fig, out_dir / fname)
        store.log_artifact(run_id, str(path), "plots")
        written.append(path)
    return written


__all__ = ["pyplot", "save", "log_run_plots"]
