"""The kNN monitor of a pretraining run: how well frozen features of ``val`` vote with labelled
``train`` features, measured during training.

The bank is a stratified, seeded ``eval.knn_label_fraction`` of the labelled train images (all by
default): with few labels is where pretraining shows. Only the bank's rows are encoded, on the
training device, and every rank encodes its share of them (and of ``val``): the features are gathered,
so the monitor costs each rank 1/world of the encoding, and no rank waits for rank 0 alone. A score with
a fraction of the labels is another measure than one with all of them, so it is registered under
another name (:func:`scored_as`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .config import ConfigError, ExperimentConfig
from .data import Partition
from .eval.features import extract_features
from .eval.fractions import label_subset
from .eval.knn import knn_metric
from .eval.metrics import metric_name
from .eval.task import EvaluationError
from .pipeline import DeviceBatches, eval_loader
from .shuffle_bn import concat_all_gather


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


class KnnMonitor:
    """The monitor of one run on one rank (``rank`` of ``world``; every rank builds one and calls
    :meth:`measure` at the same epochs: it gathers the features of all ranks)."""

    def __init__(
        self, cfg: ExperimentConfig, parts: dict[str, Partition], rank: int = 0, world: int = 1
    ) -> None:
        self.cfg, self.rank, self.world = cfg, rank, world
        self.bank = parts["train"].take(monitor_bank(cfg, parts["train"]))  # the labelled rows only
        self.val = parts["val"]
        self.loaders: dict[str, DeviceBatches] = {}

    def _loader(self, name: str, part: Partition, device: torch.device | str) -> DeviceBatches:
        if name not in self.loaders:  # this rank's shard, read with the loader workers its CPUs allow
            mine = shard(part, self.rank, self.world)
            self.loaders[name] = eval_loader(
                self.cfg.data, mine, device=device, cpus=self.cfg.scaling.cpus_per_worker
            )
        return self.loaders[name]

    def measure(self, backbone: nn.Module, device: torch.device | str = "cpu") -> dict[str, float]:
        """``{"eval/knn_top1": value}`` (``eval/knn_auroc`` for binary and multi-label): ``val`` voted
        with the bank, k and T of ``eval``."""
        feats = {}
        for name, part in (("bank", self.bank), ("val", self.val)):
            batches = self._loader(name, part, device)
            mine = extract_features(backbone, batches, device, self.cfg.run.channels_last)  # n_r x D
            feats[name] = gather_rows(mine.to(device), len(part), self.world)  # n x D
        name, value = knn_metric(
            feats["bank"],
            self.bank.targets,
            feats["val"],
            self.val.targets,
            self.bank.label_kind,
            len(self.bank.classes),
            k=self.cfg.eval.knn_k,
            t=self.cfg.eval.knn_t,
        )
        return {f"eval/{name}": value}


def shard(partition: Partition, rank: int, world: int) -> Partition:
    """Rank ``rank``'s share of ``partition``: rows ``rank, rank + world, ...``."""
    return partition.take(range(rank, len(partition), world))


def gather_rows(mine: torch.Tensor, n: int, world: int) -> torch.Tensor:
    """The n x D rows of all ranks, in partition order, from each rank's :func:`shard` (rank r holds
    rows r, r + world, ...; shards differ in length by at most one, so they are padded to gather)."""
    if world == 1 or not (dist.is_available() and dist.is_initialized()):
        return mine
    per = -(-n // world)  # ceil
    padded = torch.zeros(per, mine.shape[1], dtype=mine.dtype, device=mine.device)
    padded[: len(mine)] = mine
    gathered = concat_all_gather(padded).view(world, per, -1)  # world x per x D
    # row j of rank r is row r + j * world: read the grid column by column
    return gathered.transpose(0, 1).reshape(world * per, -1)[:n]


__all__ = [
    "can_monitor",
    "monitor_metric",
    "monitor_bank",
    "check_monitor",
    "scored_as",
    "KnnMonitor",
    "shard",
    "gather_rows",
]
