"""Plots as MLflow artifacts: matplotlib without a screen. Only figures the MLflow UI cannot draw from
the metrics (a run's loss, learning-rate and kNN curves it draws itself): the sweep's metric against T,
K and m (:mod:`service.sweep.plots`), the evaluation's label-efficiency, ROC and retrieval figures
(:mod:`service.evaluation.plots`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


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


__all__ = ["pyplot", "save"]
