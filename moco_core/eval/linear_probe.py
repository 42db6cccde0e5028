"""The linear probe, the standard protocol of MoCo (He et al. 2020) and of the SSL literature.

The encoder stays frozen, its features are computed once, and a linear layer is trained on them, for
every point of a small learning-rate x weight-decay grid; the point with the best validation score is
kept.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .heads import HeadResult, LinearProbeConfig, as_targets, head_loss, head_scores
from .metrics import task_score


def _train_linear(
    x: torch.Tensor,
    y: torch.Tensor,
    n_out: int,
    label_kind: str,
    lr: float,
    wd: float,
    cfg: LinearProbeConfig,
    seed: int,
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
    y = as_targets(train_targets)
    best: HeadResult | None = None
    for lr in cfg.lrs:
        for wd in cfg.weight_decays:
            head = _train_linear(x, y, n_out, label_kind, lr, wd, cfg, seed)
            with torch.no_grad():
                val = task_score(head_scores(head(x_val), label_kind), val_targets, label_kind)
                if (
                    best is None
                    or val > best.val_score
                    or (math.isnan(best.val_score) and not math.isnan(val))
                ):
                    best = HeadResult(
                        head_scores(head(x_test), label_kind), val, {"lr": lr, "weight_decay": wd}
                    )
    assert best is not None, "the grid is empty"
    return best
