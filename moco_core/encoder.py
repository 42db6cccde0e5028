"""The query encoder every mechanism trains (a backbone and a projection head), and what a model's
forward pass returns to the training step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .backbones import feature_dim, initial_backbone, patch_projection
from .config import ExperimentConfig


def make_mlp(layers: int, in_dim: int, hidden_dim: int, out_dim: int, last_bn: bool = True) -> nn.Module:
    """MoCo v3's MLPs: ``layers`` bias-free linear layers, BN and ReLU after each but the last; the last
    one followed by a BN without affine parameters when ``last_bn`` (SimCLR's design, as the reference)."""
    mods: list[nn.Module] = []
    for i in range(layers):
        d_in = in_dim if i == 0 else hidden_dim
        d_out = out_dim if i == layers - 1 else hidden_dim
        mods.append(nn.Linear(d_in, d_out, bias=False))
        if i < layers - 1:
            mods += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        elif last_bn:
            mods.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*mods)


def make_head(kind: str, in_dim: int, dim: int, hidden_dim: int | None = None) -> nn.Module:
    """v1: a linear layer to ``dim``; v2: MLP ``in_dim -> hidden -> ReLU -> dim``; v3 (``mlp_bn``): the
    3-layer MLP with BN of :func:`make_mlp`."""
    hidden = hidden_dim or in_dim
    if kind == "linear":
        return nn.Linear(in_dim, dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
    if kind == "mlp_bn":
        return make_mlp(3, in_dim, hidden, dim)
    raise ValueError(f"unknown head {kind!r}; choose 'linear', 'mlp' or 'mlp_bn'")


class Encoder(nn.Module):
    """Backbone followed by a projection head; only the backbone is exported."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_encoder(cfg: ExperimentConfig) -> Encoder:
    """The query encoder an experiment describes, from ``model.init`` (random by default); a ViT's
    patch projection frozen where ``model.freeze_patch_embed`` asks (MoCo v3's stability trick)."""
    backbone = initial_backbone(cfg)
    if cfg.model.freeze_patch_embed:
        patch_projection(backbone).requires_grad_(False)
    head = make_head(cfg.model.head, feature_dim(backbone), cfg.model.dim, cfg.model.hidden_dim)
    return Encoder(backbone, head)


@dataclass
class ContrastOutput:
    """One step's forward pass: InfoNCE logits (positive at column 0) and what the model keeps of it
    once the optimizer has stepped (``after_step``)."""

    logits: torch.Tensor  # rows x (1 + negatives)
    k: torch.Tensor | None = None  # moco: the keys to enqueue (N x dim; 2N when symmetric)
    q: torch.Tensor | None = None  # memory_bank: the queries (N x dim, detached) the bank moves toward
    index: torch.Tensor | None = None  # memory_bank: the training images' rows in the bank
    loss_scale: float = 1.0  # the loss is InfoNCE over ``logits`` times this (moco_v3: 4T)


__all__ = ["make_mlp", "make_head", "Encoder", "build_encoder", "ContrastOutput"]
