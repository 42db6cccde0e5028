"""Fine-tuning: the whole encoder trains together with a new linear head; the epoch with the best
validation score is kept."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from .heads import FinetuneConfig, HeadResult, as_targets, head_loss, head_scores
from .metrics import task_score


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


def lr_at(epoch: int, cfg: FinetuneConfig) -> float:
    """The learning rate of ``epoch``: cosine per epoch, or x0.1 at each milestone passed."""
    if cfg.schedule == "steps":
        return cfg.lr * 0.1 ** sum(epoch >= int(m * cfg.epochs) for m in cfg.milestones)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * epoch / cfg.epochs))


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
    trained = model.parameters()
    if cfg.freeze_backbone:
        model.backbone.requires_grad_(False)
        with torch.no_grad():  # the reference's init of the linear classifier
            model.head.weight.normal_(0.0, 0.01)
            model.head.bias.zero_()
        trained = model.head.parameters()
    y_all = as_targets(train_targets)
    opt = torch.optim.SGD(trained, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    best_val, best_state, best_epoch = -math.inf, None, 0
    for epoch in range(cfg.epochs):
        model.train()
        if cfg.freeze_backbone:
            model.backbone.eval()  # its batch-norm statistics stay the pretrained ones
        for group in opt.param_groups:
            group["lr"] = lr_at(epoch, cfg)
        for step, (images, idx) in enumerate(train_batches(epoch)):
            if cfg.max_steps_per_epoch is not None and step >= cfg.max_steps_per_epoch:
                break
            loss = head_loss(model(images.to(device)), y_all[idx].to(device), label_kind)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val = task_score(
            head_scores(_logits(model, val_batches, device), label_kind), val_targets, label_kind
        )
        if on_epoch is not None:
            on_epoch(epoch, val)
        if best_state is None or val > best_val:
            best_val, best_epoch = val, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert best_state is not None, "fine-tuning needs at least one epoch"
    model.load_state_dict(best_state)
    scores = head_scores(_logits(model, test_batches, device), label_kind)
    return HeadResult(
        scores,
        best_val,
        {
            "lr": cfg.lr,
            "weight_decay": cfg.weight_decay,
            "epochs": cfg.epochs,
            "best_epoch": best_epoch + 1,
            "frozen": int(cfg.freeze_backbone),
        },
    )
