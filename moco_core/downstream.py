"""A downstream evaluation: labelled partitions checked against the encoder, stratified label
fractions, and the protocols (kNN, linear probe, fine-tune) run on one encoder.

What an encoder is worth is what it does with few labels downstream. A *label fraction* f keeps, from
the train partition, a seeded random ``round(f * n)`` of the images of every class (multi-class), of
each value of a binary label, or of each combination of labels (multi-label); val and test stay whole.
A fraction that would leave a class (or a label value) with no example is an error, never a silent
change of the task. Every protocol is measured on the test partition: top-1 accuracy for multi-class
labels, AUROC per label and their mean for binary and multi-label ones, with a bootstrap 95% interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from .config import DataConfig, EvalConfig
from .data import Partition, load_image
from .evaluate import (
    as_score_targets, bootstrap_ci, extract_features, knn_scores, metric_name, per_label_auroc, task_score,
)
from .pipeline import eval_loader
from .probe import FinetuneConfig, LinearProbeConfig, finetune, linear_probe, num_outputs

PROTOCOLS = ("knn", "linear", "finetune")
# Every protocol scores every labelled kind (kNN votes per class, or per label for binary/multi-label).
PROTOCOL_LABEL_KINDS = {p: ("multiclass", "binary", "multilabel") for p in PROTOCOLS}
CHANNEL_SAMPLE = 16  # train images looked at to tell colour data from gray data
COLOUR_TOLERANCE = 2  # max difference between R, G and B (0-255) of a gray image saved as RGB (JPEG noise)


class EvaluationError(ValueError):
    """The evaluation cannot run as asked; the message says what is wrong and what to do."""


# ---------------------------------------------------------------------------------------------
# the task and its checks


@dataclass
class Task:
    """The labelled partitions (``train``, ``val``, ``test``) and how the encoder sees their images."""

    parts: dict[str, Partition]
    data: DataConfig  # image_size and channels of the encoder
    transform: Callable | None = None  # the encoder's preprocessing (default: build_eval_transform)
    _loaders: dict[str, DataLoader] = field(default_factory=dict, repr=False)

    @property
    def label_kind(self) -> str:
        return self.parts["train"].label_kind

    @property
    def metric(self) -> str:
        return metric_name(self.label_kind)

    @property
    def n_out(self) -> int:
        p = self.parts["train"]
        return num_outputs(p.label_kind, len(p.classes), len(p.label_names))

    def targets(self, name: str) -> np.ndarray:
        t = self.parts[name].targets
        assert t is not None
        return t

    def loader(self, name: str, batch_size: int = 256) -> DataLoader:
        """Deterministic batches of ``(image, index)`` of a partition; images decoded once, then reused."""
        if name not in self._loaders:
            self._loaders[name] = eval_loader(self.data, self.parts[name], batch_size, transform=self.transform)
        return self._loaders[name]


def check_labels(parts: dict[str, Partition], protocols: tuple[str, ...] | list[str]) -> None:
    """Raise ``EvaluationError`` unless every protocol can be trained and scored on these labels."""
    train = parts["train"]
    kind = train.label_kind
    where = f"dataset {train.folder.parent}"
    for p in protocols:
        if p not in PROTOCOLS:
            raise EvaluationError(f"unknown protocol {p!r}; choose from {', '.join(PROTOCOLS)}")
    if kind == "none":
        raise EvaluationError(
            f"{where} has no labels ({train.csv_path.name} has no label column, or --label-columns selected "
            f"none): every protocol needs labels to train and score. Add a label column to the CSVs, or name "
            f"it with --label-columns"
        )
    for p in protocols:
        if kind not in PROTOCOL_LABEL_KINDS[p]:
            raise EvaluationError(
                f"protocol {p!r} does not take {kind} labels (it takes {', '.join(PROTOCOL_LABEL_KINDS[p])})"
            )
    if kind == "multiclass":
        counts = np.bincount(train.targets, minlength=len(train.classes))
        missing = [c for c, n in zip(train.classes, counts) if n == 0]
        if len(train.classes) < 2:
            raise EvaluationError(
                f"{where}: multi-class label {train.label_names} has a single class {train.classes}: "
                f"top-1 accuracy over one class measures nothing; use a column with at least two classes"
            )
        if missing:
            raise EvaluationError(
                f"{where}: class(es) {missing} appear in val/test but have no example in train; "
                f"a classifier cannot learn them"
            )
        return
    # binary and multi-label: AUROC needs positives and negatives
    needs = ["train", "test"] + (["val"] if any(p != "knn" for p in protocols) else [])
    scorable_in_test = 0
    for j, label in enumerate(train.label_names):
        for name in needs:
            col = parts[name].targets[:, j]
            pos = int(col.sum())
            one_class = pos == 0 or pos == len(col)
            if name == "test" and not one_class:
                scorable_in_test += 1
            if one_class and (kind == "binary" or name == "train"):
                value = "positive (1)" if pos == 0 else "negative (0)"
                raise EvaluationError(
                    f"{where}: {kind} label {label!r} has no {value} example in {name} ({len(col)} rows): "
                    f"{'AUROC is undefined' if name != 'train' else 'nothing to learn'} with a single class; "
                    f"a {kind} task needs both values in every partition it uses"
                )
    if scorable_in_test == 0:
        raise EvaluationError(f"{where}: no label has both values in test, so no AUROC can be computed")


def _is_colour(path) -> bool:
    rgb = load_image(path, 3).to(torch.int16)  # 3 x H x W; gray images come back repeated
    return bool(((rgb[0] - rgb[1]).abs().max() > COLOUR_TOLERANCE) or ((rgb[1] - rgb[2]).abs().max() > COLOUR_TOLERANCE))


def check_channels(partition: Partition, encoder_channels: int, sample: int = CHANNEL_SAMPLE) -> None:
    """Refuse colour images for a one-channel (gray) encoder: it would see their luminance only, a
    different input from the one it was trained on. Gray images for a three-channel encoder are fine
    (repeated to three channels, as RGB encoders are used on X-rays)."""
    if encoder_channels != 1 or len(partition) == 0:
        return
    picks = np.unique(np.linspace(0, len(partition) - 1, min(sample, len(partition))).round().astype(int))
    for i in picks:
        if _is_colour(partition.paths[i]):
            raise EvaluationError(
                f"the encoder takes 1-channel (gray) images, but the images of this dataset are in colour "
                f"(e.g. {partition.relpath(int(i))}, CSV line {partition.rows[int(i)]}): its features of their "
                f"luminance would not measure it fairly. Evaluate an encoder pretrained with data.channels=3, "
                f"or this one on gray images"
            )


# ---------------------------------------------------------------------------------------------
# label fractions


def _strata(partition: Partition) -> tuple[np.ndarray, list[str]]:
    """One integer stratum per row and a display name per stratum."""
    t = partition.targets
    if partition.label_kind == "multiclass":
        return t, list(partition.classes)
    patterns, strata = np.unique(t.astype(np.int64), axis=0, return_inverse=True)
    names = [", ".join(f"{n}={v}" for n, v in zip(partition.label_names, row)) for row in patterns]
    return strata.reshape(-1), names


def label_subset(partition: Partition, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted row indices of a stratified, seeded ``fraction`` of ``partition``.

    Each stratum (class; binary value; combination of labels) keeps ``round(fraction * n)`` of its
    ``n`` rows, drawn with ``seed``. Raises ``EvaluationError`` when a class, a binary value, or any
    positive (or negative) of a multi-label column would be left with no example.
    """
    if not (0.0 < fraction <= 1.0) or math.isnan(fraction):
        raise EvaluationError(f"label fraction {fraction} is not in (0, 1]; e.g. 0.01, 0.1 or 1.0")
    n = len(partition)
    if fraction == 1.0:
        return np.arange(n)
    strata, names = _strata(partition)
    rng = np.random.default_rng(seed)
    keep = []
    for s in range(len(names)):
        rows = np.flatnonzero(strata == s)
        k = int(math.floor(fraction * len(rows) + 0.5))
        keep.append(rng.permutation(rows)[:k])
    idx = np.sort(np.concatenate(keep)) if keep else np.arange(0)

    def fail(what: str, count: int) -> EvaluationError:
        need = math.ceil(0.5 / count * 1000) / 1000  # smallest fraction with round(f * count) >= 1
        return EvaluationError(
            f"label fraction {fraction} leaves {what} with no example in train: it has {count} "
            f"(round({fraction} x {count}) = 0). Use a fraction of at least {need:g}, or drop that class"
        )

    t = partition.targets
    if partition.label_kind == "multiclass":
        for c, name in enumerate(partition.classes):
            count = int((t == c).sum())
            if count and not (t[idx] == c).any():
                raise fail(f"class {name!r}", count)
    else:
        kept = t[idx]
        for j, label in enumerate(partition.label_names):
            for value in (1.0, 0.0):
                count = int((t[:, j] == value).sum())
                if count and not (kept[:, j] == value).any():
                    raise fail(f"label {label!r} = {int(value)}", count)
    return idx


# ---------------------------------------------------------------------------------------------
# the protocols


@dataclass(frozen=True)
class ProtocolSettings:
    """How each protocol runs; kNN's k and T default to the experiment config's ``eval`` section."""

    knn_k: int = EvalConfig.model_fields["knn_k"].default
    knn_t: float = EvalConfig.model_fields["knn_t"].default
    linear: LinearProbeConfig = LinearProbeConfig()
    finetune: FinetuneConfig = FinetuneConfig()
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


def encode(backbone: nn.Module, task: Task, device: torch.device | str = "cpu",
           batch_size: int = 256) -> dict[str, torch.Tensor]:
    """L2-normalised features of every partition (computed once per encoder)."""
    return {name: extract_features(backbone, task.loader(name, batch_size), device) for name in task.parts}


def _measure(task: Task, protocol: str, fraction: float, idx: np.ndarray, scores: np.ndarray,
             hparams: dict, settings: ProtocolSettings, seed: int) -> ProtocolResult:
    y = task.targets("test")
    per_label = None
    if task.metric == "auroc":
        per_label = dict(zip(task.parts["test"].label_names, per_label_auroc(scores, y)))
    return ProtocolResult(
        protocol, fraction, len(idx), task.metric, task_score(scores, y, task.label_kind),
        bootstrap_ci(scores, y, task.label_kind, settings.bootstrap, seed), per_label, hparams, scores,
    )


def _finetune_batches(task: Task, idx: np.ndarray, batch_size: int, seed: int) -> Callable[[int], DataLoader]:
    images = Subset(task.loader("train").dataset, idx.tolist())
    bs = min(batch_size, len(idx))

    def batches(epoch: int) -> DataLoader:  # yields (images, row index in the train partition)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        # a last batch of one image would break batch norm in train mode: drop it
        return DataLoader(images, batch_size=bs, shuffle=True, generator=g, drop_last=len(idx) % bs == 1,
                          num_workers=0)

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
                bank = as_score_targets(y_train[idx], task.label_kind, len(train_p.classes))  # n x C
                scores = knn_scores(feats["test"], feats["train"][idx], bank, settings.knn_k, settings.knn_t)
                hparams = {"k": min(settings.knn_k, len(idx)), "t": settings.knn_t}
                results.append(_measure(task, protocol, f, idx, scores.numpy(), hparams, settings, seed))
            elif protocol == "linear":
                head = linear_probe(
                    feats["train"][idx], y_train[idx], feats["val"], task.targets("val"), feats["test"],
                    task.label_kind, task.n_out, settings.linear, seed, standardize_with=feats["train"],
                )
                results.append(_measure(task, protocol, f, idx, head.test_scores, head.hparams, settings, seed))
            else:
                head = finetune(
                    backbone, _finetune_batches(task, idx, settings.finetune.batch_size, seed), y_train,
                    task.loader("val"), task.targets("val"), task.loader("test"), task.label_kind, task.n_out,
                    settings.finetune, seed, device,
                    on_epoch=lambda e, v: log(f"  fine-tune epoch {e + 1}/{settings.finetune.epochs}: "
                                              f"val {task.metric} {v:.4f}"),
                )
                results.append(_measure(task, protocol, f, idx, head.test_scores, head.hparams, settings, seed))
    return results


__all__ = [
    "PROTOCOLS", "PROTOCOL_LABEL_KINDS", "EvaluationError", "Task", "check_labels", "check_channels",
    "label_subset", "ProtocolSettings", "ProtocolResult", "encode", "run_protocols",
]
