"""The protocols (kNN, linear probe, fine-tune) run on one encoder at every label fraction.

Every protocol is measured on the test partition: top-1 accuracy for multi-class labels, AUROC per
label and their mean for binary and multi-label ones, with a bootstrap 95% interval.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..augment import BatchViews, normalization, recipe
from ..augment.recipes import LINCLS as LINCLS_VIEWS
from ..config import EvalConfig
from ..pipeline import DeviceBatches, LabelledViews
from .features import extract_features
from .finetune import finetune
from .fractions import label_subset
from .heads import LINCLS, FinetuneConfig, LinearProbeConfig
from .knn import knn_scores, vote_targets
from .linear_probe import linear_probe
from .metrics import bootstrap_ci, per_label_auroc, task_score
from .task import Task, check_labels


@dataclass(frozen=True)
class ProtocolSettings:
    """How each protocol runs; kNN's k and T default to the experiment config's ``eval`` section."""

    knn_k: int = EvalConfig.model_fields["knn_k"].default
    knn_t: float = EvalConfig.model_fields["knn_t"].default
    linear: LinearProbeConfig = LinearProbeConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    lincls: FinetuneConfig = LINCLS  # the reference's linear classification
    bootstrap: int = 1000  # resamples of the test set for the 95% interval (0: none)
    batch_size: int = 256  # feature extraction


@dataclass
class ProtocolResult:
    """One protocol at one label fraction, measured on test."""

    protocol: str
    fraction: float
    n_labelled: int  # training images whose labels were used
    metric: str  # "top1" or "auroc"
    value: float
    ci: tuple[float, float]
    per_label: dict[str, float] | None  # AUROC per label (binary, multi-label)
    hparams: dict[str, float]
    test_scores: np.ndarray = field(repr=False)  # N_test x C


def encode(
    backbone: nn.Module, task: Task, device: torch.device | str = "cpu", batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """L2-normalised features of every partition (computed once per encoder)."""
    return {name: extract_features(backbone, task.loader(name, batch_size), device) for name in task.parts}


def _measure(
    task: Task,
    protocol: str,
    fraction: float,
    idx: np.ndarray,
    scores: np.ndarray,
    hparams: dict,
    settings: ProtocolSettings,
    seed: int,
) -> ProtocolResult:
    y = task.targets("test")
    per_label = None
    if task.metric == "auroc":
        per_label = dict(zip(task.parts["test"].label_names, per_label_auroc(scores, y)))
    return ProtocolResult(
        protocol,
        fraction,
        len(idx),
        task.metric,
        task_score(scores, y, task.label_kind),
        bootstrap_ci(scores, y, task.label_kind, settings.bootstrap, seed),
        per_label,
        hparams,
        scores,
    )


def _train_batches(
    task: Task, idx: np.ndarray, batch_size: int, seed: int, augment: bool = False
) -> Callable[[int], DeviceBatches]:
    """``epoch -> batches of (image, row index in the train partition)``: the labelled rows ``idx``,
    shuffled and seeded per epoch; with ``augment``, each image a random-resized crop with a flip (the
    reference's linear-classification views), else the evaluation view."""
    train = task.loader("train")
    data = task.data
    r = recipe(LINCLS_VIEWS, data.image_size, data.channels)
    views = BatchViews(r, *(task.stats or normalization(data.channels, data.normalization)))
    bs = min(batch_size, len(idx))

    def batches(epoch: int) -> DeviceBatches:
        images = train.loader.dataset
        if augment:
            images = LabelledViews(images.images, r, seed, epoch)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        # a last batch of one image would break batch norm in train mode: drop it
        loader = DataLoader(
            Subset(images, idx.tolist()),
            batch_size=bs,
            shuffle=True,
            generator=g,
            drop_last=len(idx) % bs == 1,
            num_workers=train.loader.num_workers,
        )
        finish = (lambda x, p, i: (views(x, p), i)) if augment else train.finish
        return DeviceBatches(loader, finish, train.device)

    return batches


def run_protocols(
    backbone: nn.Module,
    task: Task,
    protocols: list[str] | tuple[str, ...],
    fractions: list[float] | tuple[float, ...],
    settings: ProtocolSettings = ProtocolSettings(),
    seed: int = 0,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] | None = None,
    feats: dict[str, torch.Tensor] | None = None,
) -> list[ProtocolResult]:
    """Every protocol at every label fraction (same seeded subsets for every encoder), on test.

    Frozen features are computed once (or passed in ``feats``) and shared by kNN and the linear probe.
    """
    log = log or (lambda _msg: None)
    check_labels(task.parts, protocols)
    subsets = {f: label_subset(task.parts["train"], f, seed) for f in fractions}  # fail before any work
    train_p = task.parts["train"]
    y_train = task.targets("train")
    if feats is None and any(p in ("knn", "linear") for p in protocols):
        feats = encode(backbone, task, device, settings.batch_size)
    results = []
    for protocol in protocols:
        for f in fractions:
            idx = subsets[f]
            log(f"{protocol} at label fraction {f:g} ({len(idx)} labelled images)")
            if protocol == "knn":
                bank = vote_targets(y_train[idx], task.label_kind)  # n labels, or n x L
                scores = knn_scores(
                    feats["test"],
                    feats["train"][idx],
                    bank,
                    settings.knn_k,
                    settings.knn_t,
                    num_classes=len(train_p.classes),
                )
                hparams = {"k": min(settings.knn_k, len(idx)), "t": settings.knn_t}
                results.append(_measure(task, protocol, f, idx, scores.numpy(), hparams, settings, seed))
            elif protocol == "linear":
                head = linear_probe(
                    feats["train"][idx],
                    y_train[idx],
                    feats["val"],
                    task.targets("val"),
                    feats["test"],
                    task.label_kind,
                    task.n_out,
                    settings.linear,
                    seed,
                    standardize_with=feats["train"],
                )
                results.append(
                    _measure(task, protocol, f, idx, head.test_scores, head.hparams, settings, seed)
                )
            else:
                ft = settings.lincls if protocol == "lincls" else settings.finetune
                head = finetune(
                    backbone,
                    _train_batches(task, idx, ft.batch_size, seed, augment=protocol == "lincls"),
                    y_train,
                    task.loader("val"),
                    task.targets("val"),
                    task.loader("test"),
                    task.label_kind,
                    task.n_out,
                    ft,
                    seed,
                    device,
                    on_epoch=lambda e, v, p=protocol, n=ft.epochs: log(
                        f"  {p} epoch {e + 1}/{n}: val {task.metric} {v:.4f}"
                    ),
                )
                results.append(
                    _measure(task, protocol, f, idx, head.test_scores, head.hparams, settings, seed)
                )
    return results
