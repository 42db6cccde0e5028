"""Supervised heads on a pretrained encoder: the linear probe and fine-tuning.

Linear probe (the standard protocol of MoCo, He et al. 2020, and of the SSL literature): the encoder
stays frozen, its features are computed once, and a linear layer is trained on them, for every point of
a small learning-rate x weight-decay grid; the point with the best validation score is kept.
Fine-tune: the whole encoder trains together with a new linear head; the epoch with the best
validation score is kept. Both optimise cross-entropy for multi-class labels and one binary
cross-entropy per label for binary and multi-label tasks, and return test *scores* (class
probabilities, or per-label probabilities) for the caller to measure.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .evaluate import task_score


@dataclass(frozen=True)
class LinearProbeConfig:
    """The grid searched on val, and how long each point trains (AdamW, cosine decay, full data)."""

    lrs: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    weight_decays: tuple[float, ...] = (0.0, 1e-4, 1e-2)
    steps: int = 300
    batch_size: int = 256


@dataclass(frozen=True)
class FinetuneConfig:
    """SGD with momentum and a cosine schedule; the best epoch on val is kept."""

    epochs: int = 10
    lr: float = 0.01
    weight_decay: float = 1e-4
    batch_size: int = 64
    max_steps_per_epoch: int | None = None  # cap an epoch (quick trials)


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


def _as_targets(targets: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(targets))


# ---------------------------------------------------------------------------------------------
# linear probe


def _train_linear(
    x: torch.Tensor, y: torch.Tensor, n_out: int, label_kind: str, lr: float, wd: float,
    cfg: LinearProbeConfig, seed: int,
) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(x.shape[1], n_out)
    with torch.no_grad():  # a seeded init, independent of the global RNG
        bound = 1.0 / math.sqrt(x.shape[1])
        head.weight.copy_(torch.empty_like(head.weight).uniform_(-bound, bound, generator=g))
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    bs = min(cfg.batch_size, len(x))
    order, pos = torch.randperm(len(x), generator=g), 0
    for _ in range(cfg.steps):
        if pos + bs > len(x):
            order, pos = torch.randperm(len(x), generator=g), 0
        idx = order[pos : pos + bs]  # b
        pos += bs
        loss = head_loss(head(x[idx]), y[idx], label_kind)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return head.eval()


def linear_probe(
    train_feats: torch.Tensor,
    train_targets: np.ndarray,
    val_feats: torch.Tensor,
    val_targets: np.ndarray,
    test_feats: torch.Tensor,
    label_kind: str,
    n_out: int,
    cfg: LinearProbeConfig = LinearProbeConfig(),
    seed: int = 0,
    standardize_with: torch.Tensor | None = None,
) -> HeadResult:
    """Train a linear layer on frozen features for each (lr, weight decay) of the grid; keep the one
    with the best val score (ties: the first in grid order); return its test scores.

    Features are standardised per dimension with the mean and std of ``standardize_with`` (default:
    the training features); pass the features of every training image, labelled or not, so that a small
    label fraction does not make the statistics noisy.
    """
    ref = train_feats if standardize_with is None else standardize_with
    mean, std = ref.mean(dim=0), ref.std(dim=0).clamp_min(1e-6)  # D, D

    def prep(f: torch.Tensor) -> torch.Tensor:
        return ((f - mean) / std).float()

    x, x_val, x_test = prep(train_feats), prep(val_feats), prep(test_feats)  # N x D
    y = _as_targets(train_targets)
    best: HeadResult | None = None
    for lr in cfg.lrs:
        for wd in cfg.weight_decays:
            head = _train_linear(x, y, n_out, label_kind, lr, wd, cfg, seed)
            with torch.no_grad():
                val = task_score(head_scores(head(x_val), label_kind), val_targets, label_kind)
                if best is None or val > best.val_score or (math.isnan(best.val_score) and not math.isnan(val)):
                    best = HeadResult(head_scores(head(x_test), label_kind), val, {"lr": lr, "weight_decay": wd})
    assert best is not None, "the grid is empty"
    return best


# ---------------------------------------------------------------------------------------------
# fine-tuning


class _Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, n_out: int) -> None:
        super().__init__()
        self.backbone, self.head = backbone, nn.Linear(feature_dim, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # N x C


@torch.no_grad()
def _logits(model: nn.Module, batches: Iterable, device: torch.device) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images.to(device)).float().cpu() for images, _ in batches])


def finetune(
    backbone: nn.Module,
    train_batches: Callable[[int], Iterable],
    train_targets: np.ndarray,
    val_batches: Iterable,
    val_targets: np.ndarray,
    test_batches: Iterable,
    label_kind: str,
    n_out: int,
    cfg: FinetuneConfig = FinetuneConfig(),
    seed: int = 0,
    device: torch.device | str = "cpu",
    on_epoch: Callable[[int, float], None] | None = None,
) -> HeadResult:
    """Fine-tune a copy of ``backbone`` (left untouched) with a new linear head.

    Args:
        train_batches: ``epoch -> batches of (images, i)``, ``i`` indexing ``train_targets``; shuffled
            by the caller, seeded per epoch.
        val_batches, test_batches: fixed batches of ``(images, index)`` in target order.
        on_epoch: called with ``(epoch, val score)`` after each epoch (progress).

    Returns the test scores of the epoch with the best val score.
    """
    device = torch.device(device)
    torch.manual_seed(seed)  # the head's init
    model = _Classifier(copy.deepcopy(backbone), int(backbone.feature_dim), n_out).to(device)
    y_all = _as_targets(train_targets)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    best_val, best_state, best_epoch = -math.inf, None, 0
    for epoch in range(cfg.epochs):
        model.train()
        for step, (images, idx) in enumerate(train_batches(epoch)):
            if cfg.max_steps_per_epoch is not None and step >= cfg.max_steps_per_epoch:
                break
            lr = 0.5 * cfg.lr * (1 + math.cos(math.pi * epoch / cfg.epochs))  # cosine, per epoch
            for group in opt.param_groups:
                group["lr"] = lr
            loss = head_loss(model(images.to(device)), y_all[idx].to(device), label_kind)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val = task_score(head_scores(_logits(model, val_batches, device), label_kind), val_targets, label_kind)
        if on_epoch is not None:
            on_epoch(epoch, val)
        if best_state is None or val > best_val:
            best_val, best_epoch = val, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert best_state is not None, "fine-tuning needs at least one epoch"
    model.load_state_dict(best_state)
    scores = head_scores(_logits(model, test_batches, device), label_kind)
    return HeadResult(scores, best_val, {"lr": cfg.lr, "weight_decay": cfg.weight_decay,
                                         "epochs": cfg.epochs, "best_epoch": best_epoch + 1})


__all__ = [
    "LinearProbeConfig", "FinetuneConfig", "HeadResult", "num_outputs", "head_loss", "head_scores",
    "linear_probe", "finetune",
]
