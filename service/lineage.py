"""What a run and its encoder say they were made from, in MLflow's own terms: the training data as an
MLflow dataset input of the run (name: the dataset folder's, digest: our fingerprint of its train
partition, source: the dataset root, or the store it was read from), and the published epoch's
``eval/*`` metrics linked to the logged model and that dataset, so that the Models view lists and
ranks encoders by them."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from moco_core.config import ExperimentConfig

from . import tracking

CONTEXT_TAG = "mlflow.data.context"  # MLflow's tag of what a dataset input was used for


def training_dataset(cfg: ExperimentConfig, fingerprint: str) -> Any:
    """The run's training data as an MLflow dataset (no rows: a name, a digest and a source)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    where = cfg.data.store or cfg.data.root
    with warnings.catch_warnings():  # a local path matches two of MLflow's own (identical) sources
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        source = resolve_dataset_source(str(where))
    return MetaDataset(source, name=Path(str(cfg.data.root)).name or "data", digest=fingerprint)


def log_training_data(uri: str, run_id: str, cfg: ExperimentConfig, fingerprint: str) -> None:
    """The training data as a dataset input of run ``run_id`` (context ``train``)."""
    from mlflow.entities import DatasetInput, InputTag

    entity = training_dataset(cfg, fingerprint)._to_mlflow_entity()
    tags = [InputTag(key=CONTEXT_TAG, value="train")]
    tracking.client(uri).log_inputs(run_id, datasets=[DatasetInput(dataset=entity, tags=tags)])


def link_metrics(
    uri: str,
    run_id: str,
    model_id: str,
    metrics: dict[str, Any],
    cfg: ExperimentConfig,
    fingerprint: str,
) -> None:
    """The ``eval/*`` values of ``metrics`` (those reported with the published checkpoint) as the
    logged model's metrics, on the training data, at the checkpoint's step."""
    client, dataset = tracking.client(uri), training_dataset(cfg, fingerprint)
    step = int(metrics.get("step", 0))
    for key, value in metrics.items():
        if key.startswith("eval/"):
            client.log_metric(
                run_id,
                key,
                float(value),
                step=step,
                model_id=model_id,
                dataset_name=dataset.name,
                dataset_digest=dataset.digest,
            )


__all__ = ["training_dataset", "log_training_data", "link_metrics"]
