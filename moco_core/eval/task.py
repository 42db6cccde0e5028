"""The labelled task of an evaluation: its partitions, how the encoder sees them, and the checks
that every protocol can be trained and scored on its labels."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import DataConfig
from ..data import Partition, load_image
from ..errors import UserError
from ..pipeline import DeviceBatches, eval_loader
from .heads import num_outputs
from .metrics import metric_name

PROTOCOLS = ("knn", "linear", "finetune", "lincls")
# Every protocol scores every labelled kind (kNN votes per class, or per label for binary/multi-label).
PROTOCOL_LABEL_KINDS = {p: ("multiclass", "binary", "multilabel") for p in PROTOCOLS}
CHANNEL_SAMPLE = 16  # train images looked at to tell colour data from gray data
COLOUR_TOLERANCE = 2  # max difference between R, G and B (0-255) of a gray image saved as RGB (JPEG noise)


class EvaluationError(UserError, ValueError):
    """The evaluation cannot run as asked; the message says what is wrong and what to do."""


@dataclass
class Task:
    """The labelled partitions (``train``, ``val``, ``test``) and how the encoder sees their images."""

    parts: dict[str, Partition]
    data: DataConfig  # image_size and channels of the encoder
    stats: tuple[list[float], list[float]] | None = None  # the encoder's (mean, std); default data's
    device: str = "cpu"  # where the views are made (and the encoder runs)
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)  # bound of the loader workers
    _loaders: dict[str, DeviceBatches] = field(default_factory=dict, repr=False)

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

    def loader(self, name: str, batch_size: int = 256) -> DeviceBatches:
        """Deterministic batches of ``(image, index)`` of a partition, on ``device``."""
        if name not in self._loaders:
            self._loaders[name] = eval_loader(
                self.data, self.parts[name], batch_size, self.device, self.stats, self.cpus
            )
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
    return bool(
        ((rgb[0] - rgb[1]).abs().max() > COLOUR_TOLERANCE)
        or ((rgb[1] - rgb[2]).abs().max() > COLOUR_TOLERANCE)
    )


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
                f"(e.g. {partition.relpath(int(i))}, CSV line {partition.rows[int(i)]}): "
                f"its features of their "
                f"luminance would not measure it fairly. Evaluate an encoder "
                f"pretrained with data.channels=3, "
                f"or this one on gray images"
            )
