"""A sweep's MLflow runs, closed: every child run's status, plots and encoder; the best finished
trial's encoder registered; the parent run's summary (best values, trials table, plots)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from moco_core.checkpoint import load_checkpoint
from moco_core.config import ExperimentConfig, dump_yaml
from moco_core.data import Partition, dataset_fingerprint, scoring_fingerprint

from .. import tracking
from ..lineage import log_training_data
from ..pretrain.driver import published_checkpoint
from ..records import RunRecord, SweepRecord
from ..registry.publish import publish_encoder
from .plots import sweep_plots
from .report import TrialRow, table_rows, to_csv
from .trial import trained_result

TAG_TRIAL_STATUS = "moco.trial_status"
TAG_BEST_RUN = "moco.best_run_id"
TAG_REGISTERED = "moco.registered_model_uri"
TRIAL_MLFLOW_STATUS = {"finished": "FINISHED", "early-stopped": "KILLED", "error": "FAILED"}


def finish(
    rows: list[TrialRow], record: SweepRecord, cfg: ExperimentConfig, parts: dict[str, Partition]
) -> dict[str, Any] | None:
    """Close every child run (status, dataset input, encoder package), register the best finished
    trial's encoder and write the parent run's summary. Safe to run again (after a crash here,
    ``--resume`` repeats it). Returns the registration, if any."""
    fingerprint, scored_on = dataset_fingerprint(parts["train"]), scoring_fingerprint(parts)
    best = next(r for r in rows if r.status == "finished")
    registered = None
    client = tracking.client(record.tracking_uri)
    runs = [record.parent_run_id, *(r.run_id for r in rows if r.run_id is not None)]
    for run_id in runs:  # the training data as each run's dataset input (once: finish may run again)
        if not client.get_run(run_id).inputs.dataset_inputs:
            log_training_data(record.tracking_uri, run_id, cfg, fingerprint)
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            if row.run_id is None:
                continue
            register = row is best and cfg.tracking.register
            out = close_trial_run(row, record, register, (fingerprint, scored_on), Path(tmp) / row.trial_id)
            registered = out if register else registered
        summarize_parent(rows, best, record, Path(tmp) / "sweep_plots")
    return registered


def close_trial_run(
    row: TrialRow, record: SweepRecord, register: bool, data: tuple[str, str], tmp: Path
) -> dict | None:
    """A trial's child run: rank and status tags, MLflow status, and its encoder (logged, or
    registered when ``register``, scored on ``data``: the fingerprints of the training data and of what
    the score was measured on); steps already done before a crash are not done again."""
    uri = record.tracking_uri
    client = tracking.client(uri)
    client.set_tag(row.run_id, TAG_TRIAL_STATUS, row.status)
    client.set_tag(row.run_id, "moco.trial_rank", str(row.rank))
    tracking.set_status(uri, row.run_id, TRIAL_MLFLOW_STATUS[row.status])
    have = {a.path for a in client.list_artifacts(row.run_id)}
    if register:
        previous = client.get_run(record.parent_run_id).data.tags.get(TAG_REGISTERED)
        if previous is not None:  # registered before a crash: not again
            return {"model_uri": previous, "name": previous.split("/")[1], "champion": None}
    elif "encoder" in have:
        return None
    trained = trained_result(row.folder)
    if trained is None:
        return None
    trial_cfg = RunRecord.load(row.folder).experiment()
    trial_cfg = trial_cfg.model_copy(
        update={"tracking": trial_cfg.tracking.model_copy(update={"register": register})}
    )
    checkpoint, metrics, chosen = published_checkpoint(trial_cfg, trained)  # tracking.publish
    with checkpoint.as_directory() as d:
        state = load_checkpoint(d)
    fingerprint, scored_on = data
    out = publish_encoder(
        trial_cfg, state, row.run_id, uri, metrics, fingerprint, int(state["epoch"]), chosen, scored_on
    )
    if register and out:
        client.set_tag(record.parent_run_id, TAG_REGISTERED, out["model_uri"])
    return out


def summarize_parent(rows: list[TrialRow], best: TrialRow, record: SweepRecord, tmp: Path) -> None:
    """The parent run: the best trial (tags, ``best.*`` params, metric, ``best_config.yaml``), the
    trials table (``trials.csv``) and the sweep's plots."""
    client = tracking.client(record.tracking_uri)
    parent, keys = record.parent_run_id, list(best.values)
    client.set_tag(parent, TAG_BEST_RUN, best.run_id or "")
    client.set_tag(parent, "moco.best_trial", best.trial_id)
    existing = client.get_run(parent).data.params
    for k, v in best.values.items():
        if f"best.{k}" not in existing:
            client.log_param(parent, f"best.{k}", v)
    if best.metric is not None:
        client.log_metric(parent, record.metric, best.metric)
    client.log_text(parent, dump_yaml(RunRecord.load(best.folder).experiment()), "best_config.yaml")
    client.log_text(parent, to_csv(table_rows(rows, keys, record.metric)), "trials.csv")
    for path in sweep_plots(rows, keys, record.metric, tmp):
        client.log_artifact(parent, str(path), "plots")


__all__ = ["finish"]
