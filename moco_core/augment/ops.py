"""Batched image ops for MoCo views, run on the training device.

Each function works on a whole batch ``(B, C, H, W)`` (C = 1 or 3, float32 in [0, 1] unless stated) with
per-sample parameters given as 1-D tensors of length B on the same device, so the random views of a batch
are made on the GPU in a few kernels instead of per image in data-loader workers. Each op matches the
per-image ``torchvision.transforms.v2.functional`` op it names, applied to each sample alone with that
sample's parameters. Nothing here draws random numbers: the caller draws the parameters. No Python loop
runs over the batch; ``color_jitter`` loops over its 4 rounds and 4 ops only. Every function returns a
new tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "to_unit",
    "resized_crops",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "color_jitter",
    "grayscale",
    "gaussian_blur",
    "normalize",
]

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale
_LUMA = (0.2989, 0.587, 0.114)


def _per_sample(f: Tensor, x: Tensor) -> Tensor:
    """``f`` (B,) as (B, 1, 1, 1) in ``x``'s dtype and device, to broadcast over (B, C, H, W)."""
    if f.ndim != 1 or f.shape[0] != x.shape[0]:
        raise ValueError(f"expected a factor per sample, shape ({x.shape[0]},), got {tuple(f.shape)}")
    return f.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _mask(apply: Tensor, x: Tensor) -> Tensor:
    """``apply`` (B,) bool as (B, 1, 1, 1) on ``x``'s device."""
    if apply.ndim != 1 or apply.shape[0] != x.shape[0]:
        raise ValueError(f"expected a flag per sample, shape ({x.shape[0]},), got {tuple(apply.shape)}")
    return apply.to(device=x.device, dtype=torch.bool).view(-1, 1, 1, 1)


def _luma(x: Tensor) -> Tensor:
    """(B, 1, H, W) luminance of RGB ``x``, computed as torchvision's ``_rgb_to_grayscale_image``."""
    r, g, b = x.unbind(dim=-3)
    return r.mul(_LUMA[0]).add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2]).unsqueeze(dim=-3)


def _blend(x: Tensor, other: Tensor, ratio: Tensor) -> Tensor:
    """``x * ratio + other * (1 - ratio)`` clamped to [0, 1], as torchvision's ``_blend``; ratio (B,)."""
    r = _per_sample(ratio, x)
    return (x * r + other * (1.0 - r)).clamp_(0.0, 1.0)


def to_unit(images: Tensor) -> Tensor:
    """uint8 images as float32 in [0, 1]; float images as float32 (a batch's two views convert once)."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images.to(torch.float32)


def resized_crops(
    images: Tensor,
    boxes: Tensor,
    out_size: int,
    flips: Tensor | None = None,
    angles: Tensor | None = None,
) -> Tensor:
    """Crop a window of each image, resize it to ``out_size`` x ``out_size``, optionally mirror and rotate.

    ``images``: (B, C, S, S) uint8 (scaled to [0, 1] first) or float. ``boxes``: (B, 4) ``(x0, y0, w, h)``
    as fractions of the image width / height. ``flips``: (B,) bool or 0/1, mirror the output horizontally.
    ``angles``: (B,) degrees, counter-clockwise as torchvision's ``rotate``, in output pixel space.

    Without angles this matches ``v2.functional.resized_crop(img, top, left, height, width, [out, out],
    antialias=False)`` (bilinear; no antialiasing, so a strongly downscaled crop aliases where
    torchvision's default ``antialias=True`` would not). The only difference is on the output's rim
    (about half the upscaling factor wide, at least one pixel): torchvision replicates the crop's edge
    pixels, here the pixels just outside the crop are read. At the image's own border both replicate
    its edge pixels.

    An angle rotates the crop window about its centre, not the cropped image: content outside the
    window but inside the image is read from the image, and only positions outside the image are black.
    The mirror is applied after the rotation (it mirrors the output).

    One ``affine_grid`` + ``grid_sample`` (bilinear, zero padding, ``align_corners=False``) for the
    whole batch; returns (B, C, out_size, out_size) float32.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, S, S), got {tuple(images.shape)}")
    b, c, height, width = images.shape
    x = to_unit(images)
    if boxes.shape != (b, 4):
        raise ValueError(f"boxes must be ({b}, 4), got {tuple(boxes.shape)}")
    dev = x.device
    x0, y0, w, h = boxes.to(device=dev, dtype=torch.float32).unbind(dim=1)
    # affine_grid maps output coords in [-1, 1] to input coords in [-1, 1]: the window's centre and
    # half-extent in those units are (2 * x0 + w - 1, 2 * y0 + h - 1) and (w, h).
    cx = 2.0 * x0 + w - 1.0
    cy = 2.0 * y0 + h - 1.0
    # linear part: diag(w, h) @ R(-angle) @ mirror. With y pointing down, content turned
    # counter-clockwise by a means output point o reads window point R(-a) o = [[cos, -sin], [sin, cos]] o.
    a00, a01, a10, a11 = w, torch.zeros_like(w), torch.zeros_like(h), h
    if angles is not None:
        rad = angles.to(device=dev, dtype=torch.float32) * (math.pi / 180.0)
        cos, sin = torch.cos(rad), torch.sin(rad)
        a00, a01, a10, a11 = w * cos, -w * sin, h * sin, h * cos
    if flips is not None:
        sign = 1.0 - 2.0 * flips.to(device=dev, dtype=torch.float32)
        a00, a10 = a00 * sign, a10 * sign
    # Inside the image but within half a pixel of its border, read the edge pixel (torchvision's resize
    # replicates it) rather than a blend with the zero padding; outside the image stays black.
    lim = torch.tensor([1.0 - 1.0 / width, 1.0 - 1.0 / height], device=dev)
    if angles is None:  # separable: x depends on the output column only, y on the row
        u = torch.linspace(-1 + 1 / out_size, 1 - 1 / out_size, out_size, device=dev)  # pixel centres
        gx = _edge(cx[:, None] + a00[:, None] * u, lim[0])  # (B, out)
        gy = _edge(cy[:, None] + a11[:, None] * u, lim[1])
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    else:
        theta = torch.stack(
            (torch.stack((a00, a01, cx), dim=1), torch.stack((a10, a11, cy), dim=1)), dim=1
        )  # (B, 2, 3)
        grid = F.affine_grid(theta, [b, c, out_size, out_size], align_corners=False)
        grid = _edge(grid, lim)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _edge(g: Tensor, lim: Tensor) -> Tensor:
    """Grid coordinates within the image pulled onto its edge pixels' centres (see ``resized_crops``)."""
    return torch.where(g.abs() <= 1.0, g.clamp(-lim, lim), g)


def adjust_brightness(x: Tensor, f: Tensor) -> Tensor:
    """Per-sample ``v2.functional.adjust_brightness``: ``x * f`` clamped to [0, 1]."""
    return (x * _per_sample(f, x)).clamp_(0.0, 1.0)


def adjust_contrast(x: Tensor, f: Tensor) -> Tensor:
    """Per-sample ``v2.functional.adjust_contrast``: blend with the mean of the grayscale image, clamp."""
    means = x.mean(dim=(-2, -1))  # (B, C): the luma's mean is the luma of the channel means
    if x.shape[-3] == 3:
        means = means @ torch.tensor(_LUMA, dtype=x.dtype, device=x.device)[:, None]
    return _blend(x, means.view(-1, 1, 1, 1), f)


def adjust_saturation(x: Tensor, f: Tensor) -> Tensor:
    """Per-sample ``v2.functional.adjust_saturation``: blend with the grayscale image, clamp.
    Identity (a copy) for one channel, as torchvision."""
    if x.shape[-3] == 1:
        return x.clone()
    return _blend(x, _luma(x), f)


def adjust_hue(x: Tensor, h: Tensor) -> Tensor:
    """Per-sample ``v2.functional.adjust_hue`` (h in [-0.5, 0.5]): RGB -> HSV, shift H, HSV -> RGB, with
    the closed forms (H from the channel that is largest; each output channel as
    ``V - C * clamp(min(k, 4 - k), 0, 1)``, k = (n + 6 H) mod 6, n = 5, 3, 1): the same values as
    torchvision's sector tables in fewer passes. Identity (a copy) for one channel, as torchvision."""
    if x.shape[-3] == 1:
        return x.clone()
    r, g, b = x.unbind(dim=-3)  # elementwise over the channels: a reduction over 3 values is slower
    top = torch.maximum(torch.maximum(r, g), b)
    chroma = top - torch.minimum(torch.minimum(r, g), b)
    safe = torch.where(chroma == 0, 1.0, chroma)
    hue = torch.where(
        top == r, (g - b) / safe, torch.where(top == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)
    )
    hue = hue.add_(6.0 * _per_sample(h, x).view(-1, 1, 1))  # in (-9, 10): H in sixths, shifted
    hue = hue - 6.0 * torch.floor(hue * (1.0 / 6.0))  # [0, 6)
    out = torch.empty_like(x)
    for channel, n in enumerate((5.0, 3.0, 1.0)):
        k = hue + n
        k = torch.where(k >= 6.0, k - 6.0, k)
        out[:, channel] = top - chroma * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return out


def color_jitter(
    x: Tensor,
    apply: Tensor,
    brightness: Tensor,
    contrast: Tensor,
    saturation: Tensor,
    hue: Tensor,
    order: Tensor,
) -> Tensor:
    """Per-sample ``v2.ColorJitter`` with drawn parameters: where ``apply`` is true, the four adjustments
    in the order ``order[b]`` (a permutation of 0..3: 0 brightness, 1 contrast, 2 saturation, 3 hue, as
    ColorJitter's ``fn_idx``) with that sample's factors; other samples are returned unchanged.

    Four rounds; in round r each op runs once, on the samples whose ``order[:, r]`` names it (selecting
    them waits for the device: 16 small host syncs a call)."""
    b = x.shape[0]
    if order.shape != (b, 4):
        raise ValueError(f"order must be ({b}, 4), got {tuple(order.shape)}")
    ops = (
        (adjust_brightness, brightness),
        (adjust_contrast, contrast),
        (adjust_saturation, saturation),
        (adjust_hue, hue),
    )
    apply = _mask(apply, x).view(-1)
    order = order.to(x.device)
    out = x.clone()
    gray = x.shape[-3] == 1  # saturation and hue are the identity on one channel: skipped
    for r in range(4):
        for k, (op, factor) in enumerate(ops):
            if gray and k >= 2:
                continue
            idx = torch.nonzero(apply & (order[:, r] == k)).view(-1)
            if idx.numel() == 0:
                continue
            sel = op(out.index_select(0, idx), factor.to(x.device).index_select(0, idx))
            out.index_copy_(0, idx, sel)
    return out


def grayscale(x: Tensor, apply: Tensor) -> Tensor:
    """Per-sample ``v2.functional.rgb_to_grayscale(img, num_output_channels=3)`` where ``apply`` is true
    (ITU-R 601 luma on all three channels); identity (a copy) for one channel."""
    if x.shape[-3] == 1:
        return x.clone()
    return torch.where(_mask(apply, x), _luma(x).expand_as(x), x)


def _gaussian_kernels1d(sigma: Tensor, kernel_size: int) -> Tensor:
    """(B, k) kernels as torchvision's ``_get_gaussian_kernel1d``: over ``linspace(-(k-1)/2, (k-1)/2)``,
    ``exp(-0.5 (x / sigma)^2)`` normalised (torchvision writes it as a softmax of -(t / sigma)^2 with
    t = x / sqrt 2, which is the same)."""
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    t = torch.linspace(-lim, lim, steps=kernel_size, dtype=sigma.dtype, device=sigma.device)
    return torch.softmax((t / sigma.unsqueeze(1)).pow(2).neg(), dim=1)


def _reflect_band(kernels: Tensor, size: int) -> Tensor:
    """(B, size, size) matrices ``M`` with ``out[i] = sum_j M[i, j] x[j]``: a 1-D convolution with each
    sample's kernel (B, k) over ``size`` pixels, with the reflect padding of ``k // 2`` folded in
    (index -1 reads 1, index ``size`` reads ``size - 2``, as ``F.pad(mode="reflect")``)."""
    b, k = kernels.shape
    src = torch.arange(size, device=kernels.device)[:, None] + torch.arange(k, device=kernels.device) - k // 2
    src = src.abs()
    src = torch.where(src > size - 1, 2 * (size - 1) - src, src)  # (size, k): the pixel each tap reads
    band = torch.zeros(b, size, size, dtype=kernels.dtype, device=kernels.device)
    return band.scatter_add_(2, src.expand(b, -1, -1), kernels[:, None, :].expand(-1, size, -1))


def gaussian_blur(x: Tensor, apply: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Per-sample ``v2.functional.gaussian_blur(img, [k, k], [s, s])`` where ``apply`` is true.

    Separable: a horizontal then a vertical 1-D convolution with each sample's kernel, reflect padding
    of ``k // 2`` (k odd, ``k // 2`` less than H and W), each as one batched product with a banded
    matrix (``_reflect_band``), which a CPU runs faster than a grouped convolution of per-sample
    kernels (bench/RESULTS.md). Returns unapplied samples unchanged.
    """
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    _, _, height, width = x.shape
    if kernel_size // 2 >= min(height, width):
        raise ValueError(f"kernel_size {kernel_size} needs images larger than {kernel_size // 2} px")
    idx = torch.nonzero(_mask(apply, x).view(-1)).view(-1)  # only those samples are convolved
    out = x.clone()
    if idx.numel() == 0:
        return out
    kernels = _gaussian_kernels1d(_per_sample(sigma, x).view(-1)[idx], kernel_size)  # (n, k)
    rows = _reflect_band(kernels, width).unsqueeze(1)  # (n, 1, W, W), shared by the channels
    cols = rows if height == width else _reflect_band(kernels, height).unsqueeze(1)
    y = x.index_select(0, idx)  # (n, C, H, W)
    y = cols @ (y @ rows.transpose(-2, -1))
    return out.index_copy_(0, idx, y)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``v2.functional.normalize``: ``(x - mean) / std`` per channel, as ``x * (1 / std) - mean / std``
    in one pass. A one-channel ``x`` with three means and stds is a gray image replicated to three
    channels by the same pass."""
    c = x.shape[-3]
    replicated = c == 1 and len(mean) == 3
    if len(mean) != len(std) or not (len(mean) == c or replicated):
        raise ValueError(f"need {c} means and stds, got {len(mean)} and {len(std)}")
    m = torch.as_tensor(mean, dtype=torch.float64).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float64).view(-1, 1, 1)
    scale, shift = (t.to(device=x.device, dtype=x.dtype) for t in (1.0 / s, -m / s))
    return torch.addcmul(shift, x, scale)
