"""The kNN monitor of a pretraining run: how well frozen features of ``val`` vote with labelled
``train`` features, measured during training on rank 0.

The bank is a stratified, seeded ``eval.knn_label_fraction`` of the labelled train images (all by
default): with few labels is where pretraining shows. A score with a fraction of the labels is another
measure than one with all of them, so it is registered under another name (:func:`scored_as`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .config import ConfigError, ExperimentConfig
from .data import Partition
from .eval.features import extract_features
from .eval.fractions import label_subset
from .eval.knn import knn_metric
from .eval.metrics import metric_name
from .eval.task import EvaluationError


def can_monitor(parts: dict[str, Partition | None]) -> bool:
    """Whether the monitor can run: a labelled train partition and a non-empty val partition."""
    train_p, val_p = parts.get("train"), parts.get("val")
    return train_p is not None and val_p is not None and train_p.label_kind != "none" and len(val_p) > 0


def monitor_metric(train_p: Partition) -> str:
    """The monitor's metric name: ``eval/knn_top1`` (multi-class) or ``eval/knn_auroc`` (binary and
    multi-label)."""
    return f"eval/knn_{metric_name(train_p.label_kind)}"


def monitor_bank(cfg: ExperimentConfig, train_p: Partition) -> np.ndarray:
    """Rows of ``train_p`` whose labels the monitor votes with: a stratified, seeded (``run.seed``)
    ``eval.knn_label_fraction`` of them. A fraction that leaves a class without an image is a
    ``ConfigError``, so a run stops before it starts."""
    try:
        return label_subset(train_p, cfg.eval.knn_label_fraction, cfg.run.seed)
    except EvaluationError as e:
        raise ConfigError(f"eval.knn_label_fraction={cfg.eval.knn_label_fraction}: {e}") from None


def check_monitor(cfg: ExperimentConfig, parts: dict[str, Partition]) -> None:
    """Before a run starts: the monitor's label fraction keeps every class."""
    if can_monitor(parts):
        monitor_bank(cfg, parts["train"])


def scored_as(cfg: ExperimentConfig, metric: str) -> str:
    """The name a run's score is registered under: ``eval/knn_top1@0.05`` with 5 % of the labels, so
    that the champion rule never compares it with kNN over all of them."""
    f = cfg.eval.knn_label_fraction
    return f"{metric}@{f:g}" if metric.startswith("eval/knn_") and f < 1.0 else metric


def knn_monitor(
    cfg: ExperimentConfig,
    backbone: nn.Module,
    loaders: dict,
    parts: dict[str, Partition],
    bank: np.ndarray,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """``val`` against the ``bank`` rows of ``train``: ``{"eval/knn_top1": value}`` (``eval/knn_auroc``
    for binary and multi-label). ``loaders`` hold deterministic ``(image, index)`` batches of both."""
    train_p, val_p = parts["train"], parts["val"]
    feats_train = extract_features(backbone, loaders["train"], device, cfg.run.channels_last)[bank]  # n x D
    feats_val = extract_features(backbone, loaders["val"], device, cfg.run.channels_last)  # M x D
    name, value = knn_metric(
        feats_train,
        train_p.targets[bank],
        feats_val,
        val_p.targets,
        train_p.label_kind,
        len(train_p.classes),
        k=cfg.eval.knn_k,
        t=cfg.eval.knn_t,
    )
    return {f"eval/{name}": value}


__all__ = ["can_monitor", "monitor_metric", "monitor_bank", "check_monitor", "scored_as", "knn_monitor"]
