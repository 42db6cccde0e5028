"""Each view's random parameters, drawn per sample on the CPU (in the loader workers) from a generator
seeded by ``(seed, epoch, index)``, and applied to the whole batch on the device (:mod:`.views`).

One view is a row of ``COLUMNS`` floats. The crop is drawn as torchvision's ``RandomResizedCrop`` draws
it, in the pixels of the original image (``height`` x ``width``), and kept in normalised coordinates,
which a squashed store image shares with its original.
"""

from __future__ import annotations

import math
import random

import torch

from .recipes import Recipe

COLUMNS = (
    "x0", "y0", "w", "h", "flip", "angle",
    "jitter", "brightness", "contrast", "saturation", "hue", "o0", "o1", "o2", "o3",
    "gray", "blur", "sigma",
)  # fmt: skip
BOX, FLIP, ANGLE, JITTER, FACTORS, ORDER, GRAY, BLUR, SIGMA = (
    slice(0, 4), 4, 5, 6, slice(7, 11), slice(11, 15), 15, 16, 17,
)  # fmt: skip


def crop_box(
    rng: random.Random, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[float, float, float, float]:
    """``RandomResizedCrop.get_params`` (10 tries, then the central crop), as ``(x0, y0, w, h)`` fractions."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = rng.randint(0, height - h)
            j = rng.randint(0, width - w)
            return j / width, i / height, w / width, h / height
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2 / width, (height - h) // 2 / height, w / width, h / height


def _factor(rng: random.Random, strength: float) -> float:
    return rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength) if strength > 0 else 1.0


def draw_view(recipe: Recipe, rng: random.Random, height: int, width: int) -> torch.Tensor:
    """One view's parameters for an image of ``height`` x ``width`` (a ``len(COLUMNS)`` float32 row)."""
    r = recipe
    box = crop_box(rng, height, width, r.scale, r.ratio)
    flip = float(r.flip and rng.random() < 0.5)
    angle = rng.uniform(-r.degrees, r.degrees) if r.degrees else 0.0
    jitter = float(rng.random() < r.jitter_p)
    factors = [_factor(rng, r.brightness), _factor(rng, r.contrast), _factor(rng, r.saturation)]
    factors.append(rng.uniform(-r.hue, r.hue) if r.hue else 0.0)
    order = rng.sample(range(4), 4)
    gray = float(rng.random() < r.gray_p)
    blur = float(rng.random() < r.blur_p)
    sigma = rng.uniform(*r.blur_sigma)
    return torch.tensor([*box, flip, angle, jitter, *factors, *order, gray, blur, sigma], dtype=torch.float32)


def eval_fraction(image_size: int) -> float:
    """The share of the short side an evaluation view keeps: the reference's resize to S/0.875 and
    centre crop of S for S >= 224; all of it for small images."""
    return 0.875 if image_size >= 224 else 1.0


def eval_box(height: int, width: int, image_size: int) -> torch.Tensor:
    """The centre square of the original (``eval_fraction`` of its short side), as ``(x0, y0, w, h)``."""
    side = min(height, width) * eval_fraction(image_size)
    w, h = side / width, side / height
    return torch.tensor([(1 - w) / 2, (1 - h) / 2, w, h], dtype=torch.float32)


__all__ = ["COLUMNS", "crop_box", "draw_view", "eval_fraction", "eval_box"]
