"""Frozen features: what every evaluation of an encoder starts from."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F


@torch.no_grad()
def extract_features(
    backbone: nn.Module, batches: Iterable, device: torch.device | str = "cpu", channels_last: bool = False
) -> torch.Tensor:
    """L2-normalised backbone features (N x D, float32, on CPU) of ``(image, index)`` batches, in order."""
    was_training = backbone.training
    backbone.eval()
    feats = []
    for images, _ in batches:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        feats.append(F.normalize(backbone(images).float(), dim=1).cpu())
    backbone.train(was_training)
    return torch.cat(feats)
