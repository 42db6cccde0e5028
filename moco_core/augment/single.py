"""Per-channel statistics, and the evaluation transform of one image at a time (what a pulled encoder's
``preprocess`` applies to its user's images; batches in this project go through :class:`.views.EvalView`,
which gives the same view)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

from .params import eval_fraction

# Per-channel (mean, std) of images scaled to [0, 1]: ImageNet's (the default), and CIFAR-10's (the
# demo's). One channel: the mean of the three constants, so gray and colour inputs land on the same
# scale (and a gray image repeated to 3 channels is close).
STATISTICS = {
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
}


def normalization(channels: int, name: str = "imagenet") -> tuple[list[float], list[float]]:
    """``(mean, std)`` per channel of statistics ``name`` (``STATISTICS``), for images scaled to [0, 1]."""
    mean, std = STATISTICS[name]
    if channels == 3:
        return list(mean), list(std)
    if channels == 1:
        return [round(sum(mean) / 3, 4)], [round(sum(std) / 3, 4)]
    raise ValueError(f"channels must be 1 or 3, not {channels}")


def build_eval_transform(image_size: int, channels: int, stats: str = "imagenet") -> Callable:
    """Deterministic: resize the short side to ``image_size / eval_fraction``, centre crop ``image_size``,
    normalise with ``stats``."""
    mean, std = normalization(channels, stats)
    return v2.Compose(
        [
            v2.Resize(round(image_size / eval_fraction(image_size)), antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


__all__ = ["STATISTICS", "normalization", "build_eval_transform"]
