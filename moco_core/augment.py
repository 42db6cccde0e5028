"""Named augmentation recipes (``mocov1``, ``mocov2``, ``cxr``, ``cifar``) and the two-view wrapper.

Every transform takes a uint8 ``(C, H, W)`` tensor as ``data.load_image`` returns it (C = 1 or 3) and
returns a float32 ``(C, S, S)`` tensor, normalised with ``normalization(C, data.normalization)``.
Geometry runs first on uint8 (cropping shrinks the image, so the rest is cheap), colour work runs on
floats in [0, 1]. Randomness comes from the CPU's default generator only, which
``pipeline.PretrainViews`` seeds per image.

* ``mocov1``: RandomResizedCrop (scale 0.2-1), RandomGrayscale 0.2, ColorJitter(0.4, 0.4, 0.4, 0.4),
  horizontal flip (He et al. 2020).
* ``mocov2``: RandomResizedCrop (0.2-1), ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, RandomGrayscale 0.2,
  GaussianBlur (kernel ~10 % of the image, odd, sigma 0.1-2) with p 0.5, horizontal flip (Chen et al. 2020).
* ``cxr``: chest X-rays: mild crops (scale 0.6-1, ratio 0.9-1.1), rotation within +-10 degrees,
  brightness/contrast jitter only; no hue/saturation, no grayscale flip-flop, no flip (anatomy has a side).
  Also the views of ``experiments/digits.yaml``: tiny gray digits need mild views too.
* ``cifar``: the MoCo CIFAR-10 demo's: RandomResizedCrop (0.08-1), ColorJitter(0.4, 0.4, 0.4, 0.1) with
  p 0.8, RandomGrayscale 0.2, horizontal flip; no blur (a blur kernel at 32 px erases what is left).

With one channel, the colour operations that need three (saturation, hue, grayscale) are left out;
brightness and contrast stay.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

RECIPES = ("mocov1", "mocov2", "cxr", "cifar")

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


def _blur_kernel(image_size: int) -> int:
    k = max(3, int(0.1 * image_size))
    return k if k % 2 else k + 1


def _jitter(channels: int, b: float, c: float, s: float, h: float) -> v2.ColorJitter:
    if channels == 1:
        return v2.ColorJitter(brightness=b, contrast=c)
    return v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)


def _crop_and_colour(image_size: int, min_scale: float, channels: int) -> list[Callable]:
    """MoCo v2's crop and colour: RandomResizedCrop (min_scale-1), ColorJitter(0.4, 0.4, 0.4, 0.1) with
    p 0.8, and (three channels) RandomGrayscale 0.2."""
    ops: list[Callable] = [
        v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomApply([_jitter(channels, 0.4, 0.4, 0.4, 0.1)], p=0.8),
    ]
    if channels == 3:
        ops.append(v2.RandomGrayscale(p=0.2))
    return ops


def build_pretrain_transform(
    recipe: str, image_size: int, channels: int, stats: str = "imagenet"
) -> Callable:
    """The random view transform of ``recipe`` (one of ``RECIPES``), normalised with ``stats``."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown augmentation recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    mean, std = normalization(channels, stats)
    color = channels == 3
    ops: list[Callable]
    if recipe == "mocov1":
        ops = [
            v2.RandomResizedCrop(image_size, scale=(0.2, 1.0), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
        ]
        if color:
            ops.append(v2.RandomGrayscale(p=0.2))
        ops += [_jitter(channels, 0.4, 0.4, 0.4, 0.4), v2.RandomHorizontalFlip()]
    elif recipe == "mocov2":
        ops = _crop_and_colour(image_size, 0.2, channels)
        ops += [
            v2.RandomApply([v2.GaussianBlur(_blur_kernel(image_size), sigma=(0.1, 2.0))], p=0.5),
            v2.RandomHorizontalFlip(),
        ]
    elif recipe == "cifar":
        ops = [*_crop_and_colour(image_size, 0.08, channels), v2.RandomHorizontalFlip()]
    else:  # cxr
        ops = [
            v2.RandomResizedCrop(image_size, scale=(0.6, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomRotation(10),
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4)], p=0.8),
        ]
    ops.append(v2.Normalize(mean, std))
    return v2.Compose(ops)


def build_eval_transform(image_size: int, channels: int, stats: str = "imagenet") -> Callable:
    """Deterministic: resize the short side to ``image_size``, center crop, normalise with ``stats``."""
    mean, std = normalization(channels, stats)
    return v2.Compose(
        [
            v2.Resize(image_size, antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


class TwoViews:
    """Two independent draws of ``transform`` on one image: ``(query view, key view)``."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(img), self.transform(img)

    def __repr__(self) -> str:
        return f"TwoViews({self.transform!r})"


__all__ = ["RECIPES", "normalization", "build_pretrain_transform", "build_eval_transform", "TwoViews"]
