"""The trials of a sweep, ranked, and the summary printed at the end of ``moco tune``."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moco_core.config import ExperimentConfig

from .. import storage
from ..next_steps import browse_and_pull, registered_line
from ..records import RunRecord, SweepRecord

SHORT = {
    "moco.mechanism": "mechanism",
    "moco.temperature": "T",
    "moco.queue_size": "K",
    "moco.negatives": "K",
    "moco.momentum": "m",
    "optim.lr": "lr",
    "optim.batch_size": "batch",
}
STATUS_ORDER = {"finished": 0, "early-stopped": 1, "error": 2}


def format_values(values: dict[str, Any], keys: list[str]) -> str:
    """``T=0.1 K=256 m=0.99`` for the swept keys."""
    out = []
    for k in keys:
        v = values.get(k)
        out.append(f"{SHORT.get(k, k)}={v:.4g}" if isinstance(v, float) else f"{SHORT.get(k, k)}={v}")
    return " ".join(out)


@dataclass
class TrialRow:
    trial_id: str
    values: dict[str, Any]  # the swept keys
    status: str  # finished | early-stopped | error
    epochs: int  # epochs trained
    metric: float | None  # at the last epoch
    train_loss: float | None
    run_id: str | None  # the child MLflow run
    folder: str  # the trial's Ray Train run
    history: list[tuple[int, float]] = field(default_factory=list)  # (epoch, metric)
    rank: int = 0
    mechanism: str = "moco"
    negatives: int = 0  # K each query saw (ExperimentConfig.negatives of the trial's config)


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def collect(results: Any, record: SweepRecord, cfg: ExperimentConfig, keys: list[str]) -> list[TrialRow]:
    """The trials of a Tune ``ResultGrid``, ranked: finished ones by the metric, then the early-stopped
    ones (those that got further first), then failed ones."""
    rows = []
    for r in results:
        m = r.metrics or {}
        trial_id = str(m.get("trial_id") or Path(r.path).name)  # Tune may suffix a reused folder name
        folder = storage.join(record.trials_dir, trial_id)
        run_id = RunRecord.load(folder).mlflow_run_id if RunRecord.exists(folder) else None
        epochs = int(m.get("epoch", 0) or 0)
        status = "error" if r.error else ("finished" if epochs >= cfg.optim.epochs else "early-stopped")
        history: list[tuple[int, float]] = []
        df = r.metrics_dataframe
        if df is not None and record.metric in df and "epoch" in df:
            seen = {}
            for e, v in zip(df["epoch"], df[record.metric]):
                if _float(e) is not None and _float(v) is not None:
                    seen[int(e)] = float(v)
            history = sorted(seen.items())
        values = {k: (r.config or {}).get(k) for k in keys}
        trial_cfg = cfg.trial(values)
        rows.append(
            TrialRow(
                trial_id=trial_id,
                values=values,
                status=status,
                epochs=epochs,
                metric=_float(m.get(record.metric)),
                train_loss=_float(m.get("train/loss")),
                run_id=run_id,
                folder=str(folder),
                history=history,
                mechanism=trial_cfg.moco.mechanism,
                negatives=trial_cfg.negatives,
            )
        )
    sign = -1.0 if record.mode == "max" else 1.0

    def key(row: TrialRow) -> tuple:
        score = sign * row.metric if row.metric is not None else math.inf
        return STATUS_ORDER[row.status], -row.epochs, score, row.trial_id

    rows.sort(key=key)
    for i, row in enumerate(rows, 1):
        row.rank = i
    return rows


def table_rows(rows: list[TrialRow], keys: list[str], metric: str) -> list[dict[str, Any]]:
    return [
        {
            "rank": r.rank,
            "trial": r.trial_id,
            "status": r.status,
            "epochs": r.epochs,
            **{k: r.values.get(k) for k in keys},
            "negatives": r.negatives,
            metric: r.metric,
            "train/loss": r.train_loss,
            "run_id": r.run_id,
        }
        for r in rows
    ]


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["rank"])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def format_result(result: Any) -> str:
    """The ranked trials, the best one, and how to pull its encoder."""
    keys = list(result.trials[0].values) if result.trials else []
    head = [
        "rank",
        "trial",
        *(SHORT.get(k, k) for k in keys),
        "epochs",
        result.metric,
        "train/loss",
        "status",
    ]
    body = []
    for r in result.trials:
        vals = [
            f"{r.values[k]:.4g}" if isinstance(r.values.get(k), float) else str(r.values.get(k)) for k in keys
        ]
        body.append(
            [
                str(r.rank),
                r.trial_id,
                *vals,
                str(r.epochs),
                "-" if r.metric is None else f"{r.metric:.4f}",
                "-" if r.train_loss is None else f"{r.train_loss:.4f}",
                r.status,
            ]
        )
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = [f"\nsweep {result.name}: {len(result.trials)} trials, ranked by {result.metric} ({result.mode})"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body]]
    best = next(r for r in result.trials if r.status == "finished")
    lines.append(
        f"\nbest: trial {best.trial_id} ({format_values(best.values, keys)}), {result.metric} "
        f"{best.metric:.4f}; MLflow run {best.run_id}"
    )
    lines.append(f"  parent MLflow run   {result.parent_run_id}  ({result.tracking_uri})")
    lines.append(f"  sweep folder        {result.folder}")
    reg = result.registered
    lines += registered_line(reg, width=19)
    lines.append("")
    lines += browse_and_pull(result.tracking_uri, reg["model_uri"] if reg else f"runs:/{best.run_id}")
    return "\n".join(lines)


__all__ = ["TrialRow", "collect", "table_rows", "to_csv", "format_result", "format_values", "SHORT"]
