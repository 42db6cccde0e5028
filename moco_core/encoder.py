"""The query encoder every mechanism trains (a backbone and a projection head), and what a model's
forward pass returns to the training step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .backbones import feature_dim, initial_backbone
from .config import ExperimentConfig


def make_head(kind: str, in_dim: int, dim: int, hidden_dim: int | None = None) -> nn.Module:
    """v1: a linear layer to ``dim``; v2: MLP ``in_dim -> hidden -> ReLU -> dim``."""
    if kind == "linear":
        return nn.Linear(in_dim, dim)
    if kind == "mlp":
        hidden = hidden_dim or in_dim
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
    raise ValueError(f"unknown head {kind!r}; choose 'linear' or 'mlp'")


class Encoder(nn.Module):
    """Backbone followed by a projection head; only the backbone is exported."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_encoder(cfg: ExperimentConfig) -> Encoder:
    """The query encoder an experiment describes, from ``model.init`` (random by default)."""
    backbone = initial_backbone(cfg)
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


__all__ = ["make_head", "Encoder", "build_encoder", "ContrastOutput"]
