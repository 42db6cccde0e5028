"""Views of whole batches, on the device the batch is on: uint8 store images and per-sample parameters
in, normalised float32 model inputs out (:mod:`.ops` does the work, :mod:`.params` drew the numbers)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import ops
from . import params as P
from .recipes import Recipe


def to_channels(x: Tensor, channels: int) -> Tensor:
    """Gray to RGB by repetition, RGB to gray by ITU-R 601 luminance (as ``data.images.decode``)."""
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1)
    return ops.grayscale(x, torch.ones(x.shape[0], dtype=torch.bool, device=x.device))[:, :1]


class BatchViews:
    """One random view per sample of a batch, as ``recipe`` makes it.

    Gray images (one channel) for a three-channel recipe are viewed in one channel and replicated at
    the end: on a gray image saturation, hue and grayscale are the identity (to the luma weights' sum,
    0.9999), so only the crop, brightness, contrast and blur have work to do, on a third of the pixels.
    The parameters drawn are the recipe's own either way."""

    def __init__(self, recipe: Recipe, mean: Sequence[float], std: Sequence[float]) -> None:
        self.recipe, self.mean, self.std = recipe, list(mean), list(std)

    def pair(self, images: Tensor, p_q: Tensor, p_k: Tensor) -> tuple[Tensor, Tensor]:
        """The two views of a batch (query, key), the images converted to float once for both."""
        x = ops.to_unit(images)
        return self(x, p_q), self(x, p_k)

    def __call__(self, images: Tensor, p: Tensor) -> Tensor:
        r = self.recipe
        x = ops.resized_crops(
            images,
            p[:, P.BOX],
            r.image_size,
            flips=p[:, P.FLIP] > 0.5 if r.flip else None,
            angles=p[:, P.ANGLE] if r.degrees else None,
        )
        if x.shape[1] != 1:  # colour in: the recipe's channels from here on; gray stays gray until the end
            x = to_channels(x, r.channels)
        color = x.shape[1] == 3
        if color and r.gray_first and r.gray_p:
            x = ops.grayscale(x, p[:, P.GRAY] > 0.5)
        if r.jitter_p:
            b, c, s, h = p[:, P.FACTORS].unbind(1)
            x = ops.color_jitter(x, p[:, P.JITTER] > 0.5, b, c, s, h, p[:, P.ORDER].long())
        if color and not r.gray_first and r.gray_p:
            x = ops.grayscale(x, p[:, P.GRAY] > 0.5)
        if r.blur_p:
            x = ops.gaussian_blur(x, p[:, P.BLUR] > 0.5, p[:, P.SIGMA], r.blur_kernel)
        return ops.normalize(x, self.mean, self.std)  # a gray x replicated to the recipe's channels


class EvalView:
    """The deterministic view of evaluation: the centre square (``params.eval_box``), resized to
    ``image_size``, normalised."""

    def __init__(self, image_size: int, channels: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.image_size, self.channels, self.mean, self.std = image_size, channels, list(mean), list(std)

    def __call__(self, images: Tensor, boxes: Tensor) -> Tensor:
        x = to_channels(ops.resized_crops(images, boxes, self.image_size), self.channels)
        return ops.normalize(x, self.mean, self.std)


__all__ = ["to_channels", "BatchViews", "EvalView"]
