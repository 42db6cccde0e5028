"""The plots of a sweep's parent run: the metric against each swept key, all trials in parallel
coordinates, the metric per epoch of every trial (where ASHA stopped which), and where the mechanism is
swept, the metric against the number of negatives K, one line per mechanism (the MoCo paper's Fig. 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..plots import pyplot, save
from .report import SHORT, TrialRow, format_values

COLOURS = {"finished": "tab:blue", "early-stopped": "tab:orange", "error": "tab:red"}


def sweep_plots(rows: list[TrialRow], keys: list[str], metric: str, out_dir: Path) -> list[Path]:
    """``metric_vs_<key>.png`` per swept key, ``parallel_coordinates.png`` and ``curves.png`` (the metric
    per epoch of every trial: where ASHA stopped which)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    scored = [r for r in rows if r.metric is not None]
    written = [
        save(metric_vs_key(scored, k, metric), out_dir / f"metric_vs_{k.split('.')[-1]}.png") for k in keys
    ]
    written.append(save(parallel_coordinates(scored, keys, metric), out_dir / "parallel_coordinates.png"))
    written.append(save(curves(rows, keys, metric), out_dir / "curves.png"))
    if "moco.mechanism" in keys:
        written.append(save(by_mechanism(scored, metric), out_dir / "metric_vs_negatives.png"))
    return written


def by_mechanism(scored: list[TrialRow], metric: str) -> Any:
    """The last-epoch metric against K (log axis), one line per mechanism; a K measured several times
    (other swept keys, repeats) is their mean."""
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for mechanism in sorted({r.mechanism for r in scored}):
        points: dict[int, list[float]] = {}
        for r in scored:
            if r.mechanism == mechanism and r.metric is not None:
                points.setdefault(r.negatives, []).append(r.metric)
        ks = sorted(points)
        ax.plot(ks, [sum(points[k]) / len(points[k]) for k in ks], marker="o", label=mechanism)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K, negatives per query (end_to_end: 2 x batch - 2)")
    ax.set_ylabel(f"{metric} (last epoch)")
    ax.set_title(f"{metric} vs K, by mechanism")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def metric_vs_key(scored: list[TrialRow], k: str, metric: str) -> Any:
    """The last-epoch metric of every scored trial against swept key ``k``, coloured by status."""
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for status, color in COLOURS.items():
        pts = [(r.values[k], r.metric) for r in scored if r.status == status and r.values.get(k) is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=color, label=status)
    if k in ("moco.queue_size", "moco.negatives", "optim.lr", "optim.batch_size"):
        ax.set_xscale("log")
    ax.set_xlabel(f"{k} ({SHORT.get(k, k)})")
    ax.set_ylabel(f"{metric} (last epoch)")
    ax.set_title(f"{metric} vs {SHORT.get(k, k)}")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def parallel_coordinates(scored: list[TrialRow], keys: list[str], metric: str) -> Any:
    """One line per trial across the swept keys and the metric, each axis scaled to its range."""
    plt = pyplot()
    axes = [*keys, metric]
    fig, ax = plt.subplots(figsize=(1.8 * len(axes) + 2, 4))
    names = {a: sorted({str(r.values[a]) for r in scored if isinstance(r.values.get(a), str)}) for a in keys}
    columns = {
        a: [_coordinate(r.values[a], names.get(a, [])) if a in r.values else r.metric for r in scored]
        for a in axes
    }
    cmap = plt.get_cmap("viridis")
    m_lo, m_hi = min(columns[metric], default=0.0), max(columns[metric], default=1.0)
    for i, r in enumerate(scored):
        ys = []
        for a in axes:
            lo, hi = min(columns[a]), max(columns[a])
            ys.append(0.5 if hi == lo else (columns[a][i] - lo) / (hi - lo))
        shade = 0.5 if m_hi == m_lo else (r.metric - m_lo) / (m_hi - m_lo)
        ax.plot(
            range(len(axes)),
            ys,
            color=cmap(shade),
            linestyle="-" if r.status == "finished" else "--",
            marker="o",
            label=f"#{r.rank} {r.trial_id}",
        )
    ticks = [
        f"{SHORT.get(a, a)}\n"
        + ("|".join(names[a]) if names.get(a) else f"[{min(columns[a]):.3g}, {max(columns[a]):.3g}]")
        for a in axes
    ]
    ax.set_xticks(range(len(axes)), ticks)
    ax.set_yticks([])
    ax.set_title(f"all trials (dashed: stopped early); colour: {metric}")
    if len(scored) <= 12:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def _coordinate(value: Any, names: list[str]) -> float:
    """A number as itself, a word (a mechanism) as its place among the axis's words."""
    return float(names.index(value)) if isinstance(value, str) else float(value)


def curves(rows: list[TrialRow], keys: list[str], metric: str) -> Any:
    """The metric per epoch of every trial (dashed: stopped early)."""
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for r in rows:
        if r.history:
            ax.plot(
                [e for e, _ in r.history],
                [v for _, v in r.history],
                marker="o",
                linestyle="-" if r.status == "finished" else "--",
                label=f"{r.trial_id} {format_values(r.values, keys)}",
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch (dashed: stopped early)")
    ax.grid(alpha=0.3)
    if len(rows) <= 12:
        ax.legend(fontsize=7)
    return fig


__all__ = ["sweep_plots"]
