"""Backbones: torchvision ResNets without their classifier, optionally with a small-image stem.

The standard ResNet stem (7x7 stride-2 conv + max-pool) shrinks a 32x32 image to 8x8 before the first
block; on small images that throws away most of the signal, and MoCo on it was seen to end below a
random-init encoder. The small-image stem (3x3 stride-1 conv, no max-pool) is the CIFAR variant used
by the MoCo CIFAR demo and by SimCLR's CIFAR experiments.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision import models

from .config import ExperimentConfig

ARCHS: dict[str, Callable[..., models.ResNet]] = {
    "resnet18": models.resnet18,
    "resnet34": models.resnet34,
    "resnet50": models.resnet50,
}


def create_backbone(arch: str, in_channels: int = 3, small_image_stem: bool = False) -> nn.Module:
    """A ResNet that maps ``(N, in_channels, H, W)`` images to ``(N, feature_dim)`` features.

    Weights are randomly initialised (never downloaded). ``backbone.feature_dim`` holds the width.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    net = ARCHS[arch](weights=None)
    if small_image_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    net.feature_dim = feature_dim  # type: ignore[assignment]
    return net


def backbone_for(cfg: ExperimentConfig) -> nn.Module:
    """The randomly initialised backbone an experiment describes (a random-init baseline's too)."""
    return create_backbone(cfg.model.arch, cfg.data.channels, cfg.model.small_image_stem)


def initial_backbone(cfg: ExperimentConfig) -> nn.Module:
    """The backbone pretraining starts from."""
    return backbone_for(cfg)


def feature_dim(backbone: nn.Module) -> int:
    return int(backbone.feature_dim)  # type: ignore[arg-type]


@torch.no_grad()
def probe_output_dim(backbone: nn.Module, in_channels: int, image_size: int) -> int:
    """Run one image through ``backbone`` (eval mode) and return its feature width."""
    was_training = backbone.training
    backbone.eval()
    out = backbone(torch.zeros(1, in_channels, image_size, image_size))
    backbone.train(was_training)
    return int(out.shape[1])
