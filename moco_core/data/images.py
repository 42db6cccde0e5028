"""Decoding one image file into the pixels the model sees (8-bit, 1 or 3 channels), at full size or
squashed to the square working resolution of a prepared store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .dicom import is_dicom, read_dicom
from .faults import DataError, Fault

_HIGH_DEPTH = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def _open(path: str | Path) -> Image.Image:
    """Open and fully decode one image (the first frame; DICOM too); raises ``DataError`` naming the file."""
    if is_dicom(path):
        try:
            return read_dicom(path)
        except (ValueError, OSError) as e:
            raise DataError([Fault("", None, str(path), str(e))], "unreadable image") from None
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        raise DataError(
            [Fault("", None, str(path), f"cannot decode image ({type(e).__name__}: {e})")], "unreadable image"
        ) from None


def decode(path: str | Path, channels: int) -> Image.Image:
    """Decode an image file into an 8-bit PIL image of mode ``L`` (one channel) or ``RGB`` (three).

    16-bit and 32-bit gray (modes ``I;16``, ``I``, ``F``) are min-max scaled per image to 0..255
    (never clipped; a constant image becomes 0). Transparent images are composited onto white.
    Palette, CMYK and other colour modes become RGB. One channel is the luminance (ITU-R 601);
    three channels from a gray image repeat it.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    im = _open(path)
    if im.mode in _HIGH_DEPTH:
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
        im = Image.fromarray(np.rint(a).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if im.mode == "1":
        im = im.convert("L")
    if im.mode != "L":
        im = im.convert("RGB")
    if channels == 1 and im.mode == "RGB":
        im = im.convert("L")
    if channels == 3 and im.mode == "L":
        im = im.convert("RGB")
    return im


def _chw(im: Image.Image) -> np.ndarray:
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def load_image(path: str | Path, channels: int) -> torch.Tensor:
    """``decode`` as a uint8 ``(channels, H, W)`` tensor."""
    return torch.from_numpy(np.array(_chw(decode(path, channels))))  # a writable copy


def squashed(path: str | Path, channels: int, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """``decode``, then resized (antialiased) to ``size`` x ``size`` whatever the aspect ratio: a uint8
    ``(channels, size, size)`` array and the original ``(height, width)``. Nothing is cut off; the
    crops of :mod:`moco_core.augment` are drawn in the original geometry (``(height, width)``), so a
    squashed image gives the same views as the original one, at the working resolution."""
    im = decode(path, channels)
    original = (im.height, im.width)
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.ascontiguousarray(_chw(im)), original


__all__ = ["decode", "load_image", "squashed"]
