"""The consumer API: an encoder, ready for a downstream classifier, from any reference.

from service.registry import load_encoder
enc = load_encoder("models:/moco-digits@champion")
features = enc(enc.preprocess(images))  # N x feature_dim
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch
from torch import nn

from moco_core.augment import build_eval_transform

from .package import read_encoder_package
from .refs import resolve_ref


class Preprocess:
    """Image tensor(s) -> what the encoder expects: ``(C, H, W)`` or ``(N, C, H, W)``, uint8 (0-255) or
    float (0-1) -> float32 resized (short side) and center-cropped to ``image_size``, normalised with the
    package's mean/std. RGB input to a gray encoder is converted to gray, gray input to an RGB encoder
    is repeated. PIL images are accepted too."""

    def __init__(self, image_size: int, channels: int, mean: list[float], std: list[float]) -> None:
        from torchvision.transforms import v2

        self.image_size, self.channels = int(image_size), int(channels)
        self.transform = build_eval_transform(self.image_size, self.channels)
        for op in getattr(self.transform, "transforms", []):
            if isinstance(op, v2.Normalize):  # the package's statistics, whatever today's constants are
                op.mean, op.std = [float(m) for m in mean], [float(s) for s in std]

    def __call__(self, img: Any) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        if not isinstance(img, torch.Tensor):
            img = TF.pil_to_tensor(img)
        if img.ndim not in (3, 4):
            raise ValueError(
                f"expected an image (C, H, W) or a batch (N, C, H, W), got shape {tuple(img.shape)}"
            )
        c = img.shape[-3]
        if c != self.channels:
            if c == 3 and self.channels == 1:
                img = TF.rgb_to_grayscale(img, num_output_channels=1)
            elif c == 1 and self.channels == 3:
                img = img.expand(*img.shape[:-3], 3, *img.shape[-2:])
            else:
                raise ValueError(f"the encoder takes {self.channels}-channel images, got {c} channels")
        return self.transform(img)

    def __repr__(self) -> str:
        return f"Preprocess(image_size={self.image_size}, channels={self.channels}, {self.transform!r})"


def load_encoder(ref: str, uri: str | None = None) -> nn.Module:
    """The backbone of ``ref`` (resolved against the MLflow store at ``uri``, default: the project's) in
    eval mode, with ``.encoder_meta`` (its ``encoder.json``) and
    ``.preprocess`` (see :class:`Preprocess`)::

        enc = load_encoder("models:/moco-digits@champion"); x = enc.preprocess(img); f = enc(x[None])
    """
    with tempfile.TemporaryDirectory(prefix="moco-encoder-") as tmp:
        backbone, meta = read_encoder_package(resolve_ref(ref, tmp, uri))
    backbone.encoder_meta = meta  # type: ignore[assignment]
    pre = Preprocess(meta["image_size"], meta["in_channels"], meta["mean"], meta["std"])
    backbone.preprocess = pre  # type: ignore[assignment]
    return backbone


__all__ = ["Preprocess", "load_encoder"]
