"""Supervised heads on a pretrained encoder: their settings, width, loss and scores.

Both heads (:mod:`.linear_probe`, :mod:`.finetune`) optimise cross-entropy for multi-class labels and
one binary cross-entropy per label for binary and multi-label tasks, and return test *scores* (class
probabilities, or per-label probabilities) for the caller to measure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class LinearProbeConfig:
    """The grid searched on val, and how long each point trains (AdamW, cosine decay, full data):
    ``epochs`` passes over the labelled set, and at least ``min_steps`` steps (a few dozen labelled
    images are one step an epoch)."""

    lrs: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    weight_decays: tuple[float, ...] = (0.0, 1e-4, 1e-2)
    epochs: int = 100
    min_steps: int = 300
    batch_size: int = 256

    def steps(self, n: int) -> int:
        """Steps for ``n`` labelled images."""
        return max(self.min_steps, self.epochs * math.ceil(n / min(self.batch_size, n)))


@dataclass(frozen=True)
class FinetuneConfig:
    """SGD with momentum and a cosine (or stepped) schedule; the best epoch on val is kept. With
    ``freeze_backbone`` only a linear head trains, on augmented views: the reference's linear
    classification (``LINCLS``)."""

    epochs: int = 10
    lr: float = 0.01
    weight_decay: float = 1e-4
    batch_size: int = 64
    max_steps_per_epoch: int | None = None  # cap an epoch (quick trials)
    freeze_backbone: bool = False  # the backbone frozen (BN in eval mode), the head initialised N(0, 0.01)
    schedule: Literal["cosine", "steps"] = "cosine"  # steps: lr x0.1 at each of `milestones` x epochs
    milestones: tuple[float, ...] = (0.6, 0.8)


# facebookresearch/moco main_lincls.py: SGD lr 30, momentum 0.9, no weight decay, 100 epochs of
# random-resized crops and flips, batch 256, lr x0.1 at epochs 60 and 80.
LINCLS = FinetuneConfig(
    epochs=100, lr=30.0, weight_decay=0.0, batch_size=256, freeze_backbone=True, schedule="steps"
)


@dataclass
class HeadResult:
    """Test scores of the chosen head and how it was chosen."""

    test_scores: np.ndarray  # N_test x C: class probabilities (multi-class) or per-label probabilities
    val_score: float  # the selection score on val (top-1 or mean AUROC)
    hparams: dict[str, float]


def num_outputs(label_kind: str, num_classes: int, num_labels: int) -> int:
    """Width of the head: one logit per class (multi-class) or per label (binary, multi-label)."""
    return num_classes if label_kind == "multiclass" else num_labels


def head_loss(logits: torch.Tensor, targets: torch.Tensor, label_kind: str) -> torch.Tensor:
    """Cross-entropy over classes (multi-class) or the mean per-label binary cross-entropy."""
    if label_kind == "multiclass":
        return F.cross_entropy(logits, targets.long())
    return F.binary_cross_entropy_with_logits(logits, targets.float().reshape(logits.shape))


def head_scores(logits: torch.Tensor, label_kind: str) -> np.ndarray:
    """Probabilities from logits: softmax over classes, or a sigmoid per label."""
    probs = logits.softmax(dim=1) if label_kind == "multiclass" else logits.sigmoid()
    return probs.detach().float().cpu().numpy()


def as_targets(targets: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(targets))
