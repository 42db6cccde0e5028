"""The MLflow run of an evaluation: params, metrics, ``evaluation.json`` and ``plots/``, in the source
run's experiment and tagged with the source run's id, so the MLflow UI shows it beside the training."""

from __future__ import annotations

import re
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param

from moco_core.config import TrackingConfig

from .. import tracking
from ..registry.champion import TAG_SOURCE_RUN
from .choices import JSON_NAME
from .plots import evaluation_plots
from .report import write_json


def _key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", text)


def metric_items(report: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics: ``eval/<protocol>_<metric>`` (label fraction 1), and per fraction
    ``eval/<protocol>_<metric>/frac_<f>`` with ``/ci_low``, ``/ci_high`` and ``/label_<name>``; the same
    under ``baseline/`` for the random init, and ``diff/...`` for the difference."""
    out: dict[str, float] = {}
    for r in report["results"]:
        name, frac = f"{r['protocol']}_{r['metric']}", f"frac_{r['label_fraction']:g}"
        for prefix, side in (("eval", r["encoder"]), ("baseline", r["baseline"])):
            if side is None:
                continue
            items = {
                f"{name}/{frac}": side["value"],
                f"{name}/{frac}/ci_low": side["ci95"][0],
                f"{name}/{frac}/ci_high": side["ci95"][1],
            }
            if r["label_fraction"] == 1.0:
                items[name] = side["value"]
            for label, v in (side["per_label"] or {}).items():
                items[f"{name}/{frac}/label_{_key(label)}"] = v
            out.update({f"{prefix}/{k}": v for k, v in items.items() if v is not None})
        if r["difference"] is not None:
            out[f"diff/{name}/{frac}"] = r["difference"]
    return out


def _experiment(client, uri: str, source_run_id: str | None) -> tuple[str, str]:
    """The source run's experiment when this store has the run, else the default experiment."""
    if source_run_id:
        try:
            exp_id = client.get_run(source_run_id).info.experiment_id
            return exp_id, client.get_experiment(exp_id).name
        except Exception:  # noqa: BLE001 - a package from another store: no run to link to here
            pass
    name = TrackingConfig().experiment
    exp = client.get_experiment_by_name(name)
    return (
        exp.experiment_id
        if exp
        else client.create_experiment(name, artifact_location=tracking.default_artifact_location(uri))
    ), name


def log_run(uri, ref, meta, task, report, results, feats, seed) -> dict[str, Any]:
    """One MLflow run: params, metrics, ``evaluation.json`` and ``plots/``; returns where it is."""
    client = tracking.client(uri)
    source = meta.get("source_run_id")
    exp_id, exp_name = _experiment(client, uri, source)
    tags = {
        "moco.kind": "evaluation",
        "moco.encoder_ref": ref,
        "moco.data_fingerprint": report["data"]["train_fingerprint"],
        **({TAG_SOURCE_RUN: source} if source else {}),
    }
    run_name = f"evaluate-{meta.get('name') or meta['arch']}-{datetime.now():%Y%m%d-%H%M%S}"
    run_id = client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
    mlflow_info = {
        "tracking_uri": uri,
        "run_id": run_id,
        "experiment_id": exp_id,
        "experiment_name": exp_name,
    }
    try:
        ts = int(time.time() * 1000)
        client.log_batch(
            run_id,
            params=[Param(k, str(v)) for k, v in params(report, ref, seed).items()],
            metrics=[Metric(k, float(v), ts, 0) for k, v in sorted(metric_items(report).items())],
        )
        with tempfile.TemporaryDirectory(prefix="moco-evaluate-") as tmp:
            d = Path(tmp)
            client.log_artifact(run_id, str(write_json(d / JSON_NAME, {**report, "mlflow": mlflow_info})))
            for path in evaluation_plots(task, results, feats, seed, d):
                client.log_artifact(run_id, str(path), "plots")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return mlflow_info


def params(report: dict[str, Any], ref: str, seed: int) -> dict[str, Any]:
    """The run's params: the encoder, the data and every setting of the protocols."""
    s, data = report["settings"], report["data"]
    return {
        "encoder": ref,
        "data.root": data["root"],
        "data.splits_dir": data["splits_dir"],
        "data.label_kind": data["label_kind"],
        "protocols": " ".join(s["protocols"]),
        "label_fractions": " ".join(f"{f:g}" for f in s["label_fractions"]),
        "baseline": s["baseline"],
        "seed": seed,
        "knn_k": s["knn_k"],
        "knn_t": s["knn_t"],
        "bootstrap": s["bootstrap"],
        **{f"linear.{k}": v for k, v in s["linear"].items()},
        **{f"finetune.{k}": v for k, v in s["finetune"].items()},
    }


__all__ = ["log_run", "metric_items"]
