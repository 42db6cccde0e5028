"""The linear probe, the standard protocol of MoCo (He et al. 2020) and of the SSL literature.

The encoder stays frozen, its features are computed once, and a linear layer is trained on them, for
every point of a small learning-rate x weight-decay grid (all points in one batched loop); the point
with the best validation score is kept.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .heads import HeadResult, LinearProbeConfig, as_targets, head_loss, head_scores
from .metrics import task_score


def _train_linear_grid(
    x: torch.Tensor,
    y: torch.Tensor,
    n_out: int,
    label_kind: str,
    grid: list[tuple[float, float]],
    cfg: LinearProbeConfig,
    seed: int,
) -> list[nn.Linear]:
    """One linear layer for each ``(lr, weight decay)`` of ``grid``, all trained together: the same
    seeded init and batches for every point, one AdamW param group per point, and every point's
    logits from one batched product. The sum of the points' losses gives each point exactly its own
    gradient, so each layer is the one a run of its point alone trains (to float rounding)."""
    g = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(x.shape[1])
    init = torch.empty(n_out, x.shape[1]).uniform_(-bound, bound, generator=g)  # C x D, seeded
    weights = [nn.Parameter(init.clone()) for _ in grid]
    biases = [nn.Parameter(torch.zeros(n_out)) for _ in grid]
    opt = torch.optim.AdamW(
        [{"params": [w, b], "lr": lr, "weight_decay": wd} for (lr, wd), w, b in zip(grid, weights, biases)]
    )
    steps = cfg.steps(len(x))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    bs = min(cfg.batch_size, len(x))
    order, pos = torch.randperm(len(x), generator=g), 0
    for _ in range(steps):
        if pos + bs > len(x):
            order, pos = torch.randperm(len(x), generator=g), 0
        idx = order[pos : pos + bs]  # b
        pos += bs
        logits = torch.einsum("bd,gcd->gbc", x[idx], torch.stack(weights)) + torch.stack(biases)[:, None]
        loss = sum(head_loss(point, y[idx], label_kind) for point in logits)  # G x b x C -> one sum
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    heads = []
    for w, b in zip(weights, biases):
        head = nn.Linear(x.shape[1], n_out)
        with torch.no_grad():
            head.weight.copy_(w)
            head.bias.copy_(b)
        heads.append(head.eval())
    return heads


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
    grid = [(lr, wd) for lr in cfg.lrs for wd in cfg.weight_decays]
    best: HeadResult | None = None
    for (lr, wd), head in zip(grid, _train_linear_grid(x, y, n_out, label_kind, grid, cfg, seed)):
        with torch.no_grad():
            val = task_score(head_scores(head(x_val), label_kind), val_targets, label_kind)
            if best is None or val > best.val_score or (math.isnan(best.val_score) and not math.isnan(val)):
                best = HeadResult(head_scores(head(x_test), label_kind), val, {"lr": lr, "weight_decay": wd})
    assert best is not None, "the grid is empty"
    return best
