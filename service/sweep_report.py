"""What a sweep leaves behind: progress lines, the ranked trials, MLflow parent and child runs, plots,
the best trial's registered encoder, and the summary printed at the end of ``moco tune``.

Imported only by the sweep driver (it imports Ray Tune and MLflow at the top).
"""

from __future__ import annotations

import csv
import io
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from ray.train import Checkpoint
from ray.tune import Callback

from moco_core.config import ExperimentConfig, dump_yaml
from moco_core.data import Partition, dataset_fingerprint

from . import storage, tracking
from .train import CHECKPOINT_FILE, RUN_RECORD, RunRecord, load_checkpoint_dict, publish_encoder

SHORT = {"moco.temperature": "T", "moco.queue_size": "K", "moco.momentum": "m", "optim.lr": "lr"}
STATUS_ORDER = {"finished": 0, "early-stopped": 1, "error": 2}
TAG_TRIAL_STATUS = "moco.trial_status"
TAG_BEST_RUN = "moco.best_run_id"
TAG_REGISTERED = "moco.registered_model_uri"


def format_values(values: dict[str, Any], keys: list[str]) -> str:
    """``T=0.1 K=256 m=0.99`` for the swept keys."""
    out = []
    for k in keys:
        v = values.get(k)
        out.append(f"{SHORT.get(k, k)}={v:.4g}" if isinstance(v, float) else f"{SHORT.get(k, k)}={v}")
    return " ".join(out)


class SweepProgress(Callback):
    """One line per trial event on stderr (Tune's own status table is off)."""

    def __init__(self, epochs: int, keys: list[str], metric: str, asha: bool = True) -> None:
        self.epochs, self.keys, self.metric, self.asha = epochs, keys, metric, asha

    @staticmethod
    def _say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(f"trial {trial.trial_id} started: {format_values(trial.config, self.keys)}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.metric in result and "epoch" in result:
            show_loss = "train/loss" in result and self.metric != "train/loss"
            loss = f"  train/loss {result['train/loss']:.4f}" if show_loss else ""
            self._say(f"trial {trial.trial_id} epoch {result['epoch']}/{self.epochs}: "
                      f"{self.metric} {result[self.metric]:.4f}{loss}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epoch = (trial.last_result or {}).get("epoch", 0)
        by = " by ASHA" if self.asha else ""
        how = "finished" if epoch >= self.epochs else f"stopped early{by} after epoch {epoch}"
        self._say(f"trial {trial.trial_id} {how}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(f"trial {trial.trial_id} failed; its error is under {trial.path}")


# ---------------------------------------------------------------------------------------------
# the trials, ranked


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

    def latest_checkpoint(self) -> str | None:
        """The trial's last epoch checkpoint (a folder or a URI)."""
        found = [d for d in storage.list_dirs(self.folder) if d.startswith("epoch_")
                 and storage.exists(storage.join(self.folder, d, CHECKPOINT_FILE))]
        return storage.join(self.folder, max(found)) if found else None


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def collect(results: Any, record: Any, cfg: ExperimentConfig, keys: list[str]) -> list[TrialRow]:
    """The trials of a Tune ``ResultGrid``, ranked: finished ones by the metric, then the early-stopped
    ones (those that got further first), then failed ones."""
    rows = []
    for r in results:
        m = r.metrics or {}
        trial_id = str(m.get("trial_id") or Path(r.path).name)  # Tune may suffix a reused folder name
        folder = storage.join(record.trials_dir, trial_id)
        run_id = RunRecord.load(folder).mlflow_run_id if storage.exists(storage.join(folder, RUN_RECORD)) else None
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
        rows.append(TrialRow(
            trial_id=trial_id, values={k: (r.config or {}).get(k) for k in keys}, status=status, epochs=epochs,
            metric=_float(m.get(record.metric)), train_loss=_float(m.get("train/loss")), run_id=run_id,
            folder=str(folder), history=history,
        ))
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
        {"rank": r.rank, "trial": r.trial_id, "status": r.status, "epochs": r.epochs,
         **{k: r.values.get(k) for k in keys}, metric: r.metric, "train/loss": r.train_loss, "run_id": r.run_id}
        for r in rows
    ]


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["rank"])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# MLflow: child runs, the best trial's encoder, the parent run


def finish(rows: list[TrialRow], record: Any, cfg: ExperimentConfig, train_p: Partition) -> dict[str, Any] | None:
    """Close every child run (status, encoder package, plots), register the best finished trial's encoder
    and write the parent run's summary. Safe to run again (after a crash here, ``--resume`` repeats it)."""
    uri = record.tracking_uri
    client = MlflowClient(uri)
    fingerprint = dataset_fingerprint(train_p)
    best = next(r for r in rows if r.status == "finished")
    keys = list(best.values)
    registered = None
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            if row.run_id is None:
                continue
            client.set_tag(row.run_id, TAG_TRIAL_STATUS, row.status)
            client.set_tag(row.run_id, "moco.trial_rank", str(row.rank))
            status = {"finished": "FINISHED", "early-stopped": "KILLED", "error": "FAILED"}[row.status]
            tracking.set_status(uri, row.run_id, status)
            have = {a.path for a in client.list_artifacts(row.run_id)}
            if "plots" not in have:
                tracking.log_plots(uri, row.run_id, Path(tmp) / row.trial_id / "plots")
            ckpt = row.latest_checkpoint()
            register = row is best and cfg.tracking.register
            if register:
                previous = client.get_run(record.parent_run_id).data.tags.get(TAG_REGISTERED)
                if previous is not None:  # registered before a crash: not again
                    registered = {"model_uri": previous, "name": previous.split("/")[1], "champion": None}
                    continue
            elif "encoder" in have:
                continue
            if ckpt is None:
                continue
            trial_cfg = ExperimentConfig.model_validate(RunRecord.load(row.folder).config)
            trial_cfg = trial_cfg.model_copy(
                update={"tracking": trial_cfg.tracking.model_copy(update={"register": register})})
            metrics = dict(client.get_run(row.run_id).data.metrics)
            with Checkpoint(ckpt).as_directory() as d:
                state = load_checkpoint_dict(d)
            out = publish_encoder(trial_cfg, state, row.run_id, uri, metrics, fingerprint)
            if register and out:
                registered = out
                client.set_tag(record.parent_run_id, TAG_REGISTERED, out["model_uri"])

        parent = record.parent_run_id
        best_cfg = ExperimentConfig.model_validate(RunRecord.load(best.folder).config)
        client.set_tag(parent, TAG_BEST_RUN, best.run_id or "")
        client.set_tag(parent, "moco.best_trial", best.trial_id)
        existing = client.get_run(parent).data.params
        for k, v in best.values.items():
            if f"best.{k}" not in existing:
                client.log_param(parent, f"best.{k}", v)
        if best.metric is not None:
            client.log_metric(parent, record.metric, best.metric)
        client.log_text(parent, dump_yaml(best_cfg), "best_config.yaml")
        client.log_text(parent, to_csv(table_rows(rows, keys, record.metric)), "trials.csv")
        for path in sweep_plots(rows, keys, record.metric, Path(tmp) / "sweep_plots"):
            client.log_artifact(parent, str(path), "plots")
    return registered


# ---------------------------------------------------------------------------------------------
# plots of the parent run


def sweep_plots(rows: list[TrialRow], keys: list[str], metric: str, out_dir: Path) -> list[Path]:
    """``metric_vs_<key>.png`` per swept key, ``parallel_coordinates.png`` and ``curves.png`` (the metric
    per epoch of every trial: where ASHA stopped which)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    scored = [r for r in rows if r.metric is not None]
    colors = {"finished": "tab:blue", "early-stopped": "tab:orange", "error": "tab:red"}
    written = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written.append(out_dir / name)

    for k in keys:
        fig, ax = plt.subplots(figsize=(6, 4))
        for status, color in colors.items():
            pts = [(r.values[k], r.metric) for r in scored if r.status == status and r.values.get(k) is not None]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=color, label=status)
        if k in ("moco.queue_size", "optim.lr"):
            ax.set_xscale("log")
        ax.set_xlabel(f"{k} ({SHORT.get(k, k)})")
        ax.set_ylabel(f"{metric} (last epoch)")
        ax.set_title(f"{metric} vs {SHORT.get(k, k)}")
        ax.grid(alpha=0.3)
        ax.legend()
        save(fig, f"metric_vs_{k.split('.')[-1]}.png")

    axes = [*keys, metric]
    fig, ax = plt.subplots(figsize=(1.8 * len(axes) + 2, 4))
    columns = {a: [float(r.values[a]) if a in r.values else r.metric for r in scored] for a in axes}
    cmap = plt.get_cmap("viridis")
    m_lo, m_hi = min(columns[metric], default=0.0), max(columns[metric], default=1.0)
    for i, r in enumerate(scored):
        ys = []
        for a in axes:
            lo, hi = min(columns[a]), max(columns[a])
            ys.append(0.5 if hi == lo else (columns[a][i] - lo) / (hi - lo))
        shade = 0.5 if m_hi == m_lo else (r.metric - m_lo) / (m_hi - m_lo)
        ax.plot(range(len(axes)), ys, color=cmap(shade), linestyle="-" if r.status == "finished" else "--",
                marker="o", label=f"#{r.rank} {r.trial_id}")
    ax.set_xticks(range(len(axes)), [f"{SHORT.get(a, a)}\n[{min(columns[a]):.3g}, {max(columns[a]):.3g}]"
                                     for a in axes])
    ax.set_yticks([])
    ax.set_title(f"all trials (dashed: stopped early); colour: {metric}")
    if len(scored) <= 12:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    save(fig, "parallel_coordinates.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if r.history:
            ax.plot([e for e, _ in r.history], [v for _, v in r.history], marker="o",
                    linestyle="-" if r.status == "finished" else "--",
                    label=f"{r.trial_id} {format_values(r.values, keys)}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch (dashed: stopped early)")
    ax.grid(alpha=0.3)
    if len(rows) <= 12:
        ax.legend(fontsize=7)
    save(fig, "curves.png")
    return written


# ---------------------------------------------------------------------------------------------
# the terminal summary


def format_result(result: Any) -> str:
    """The ranked trials, the best one, and how to pull its encoder."""
    keys = list(result.trials[0].values) if result.trials else []
    head = ["rank", "trial", *(SHORT.get(k, k) for k in keys), "epochs", result.metric, "train/loss", "status"]
    body = []
    for r in result.trials:
        vals = [f"{r.values[k]:.4g}" if isinstance(r.values.get(k), float) else str(r.values.get(k)) for k in keys]
        body.append([str(r.rank), r.trial_id, *vals, str(r.epochs),
                     "-" if r.metric is None else f"{r.metric:.4f}",
                     "-" if r.train_loss is None else f"{r.train_loss:.4f}", r.status])
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = [f"\nsweep {result.name}: {len(result.trials)} trials, ranked by {result.metric} ({result.mode})"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body]]
    best = next(r for r in result.trials if r.status == "finished")
    lines.append(f"\nbest: trial {best.trial_id} ({format_values(best.values, keys)}), {result.metric} "
                 f"{best.metric:.4f}; MLflow run {best.run_id}")
    lines.append(f"  parent MLflow run   {result.parent_run_id}  ({result.tracking_uri})")
    lines.append(f"  sweep folder        {result.folder}")
    reg = result.registered
    if reg:
        champ = {True: "now champion", False: "champion unchanged"}.get(reg.get("champion"), "")
        lines.append(f"  registered          {reg['model_uri']}" + (f" ({champ})" if champ else ""))
    if result.tracking_uri.startswith("sqlite:///"):
        lines.append(f"\nbrowse: mlflow ui --backend-store-uri {result.tracking_uri}"
                     "   (then open http://127.0.0.1:5000)")
    ref = reg["model_uri"] if reg else f"runs:/{best.run_id}"
    lines.append(f"pull:   moco encoders pull {ref} --out encoder/")
    return "\n".join(lines)


__all__ = ["SweepProgress", "TrialRow", "collect", "finish", "sweep_plots", "format_result", "format_values"]
