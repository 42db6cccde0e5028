"""Where a batch's views spend their time: each op of ``BatchViews`` timed alone on one batch of uint8
store images, on the CPU or a GPU.

    python bench/augment_ops.py --image-size 224 --store-size 256 --batch-size 64 --threads 1
    python bench/augment_ops.py --image-size 224 --store-size 256 --batch-size 64 --threads 1 --peers

Prints one line per op (the median milliseconds per batch of one view) and the whole view; the
parameters are the recipe's own draws (seeded), so each op runs on the share of samples it applies to
(the four colour adjustments alone run on all of them). ``--store-channels 1`` times gray store images
viewed for a three-channel recipe (made in gray, replicated at the end).

``--peers`` adds the other batched ways to make the same crops and blur, each checked against ours on
the same batch (the largest difference, away from the crops' rims, is printed beside its time):
``torchvision.ops.roi_align`` (one bilinear sample per output pixel, then the flips) and kornia's
``crop_and_resize`` and ``gaussian_blur2d`` (separable, one sigma per sample).
"""

from __future__ import annotations

import argparse
import random
import sys

import torch
from step_overhead import _time  # this folder is on sys.path when run as bench/augment_ops.py

from moco_core.augment import BatchViews, draw_view, normalization, ops, recipe, to_channels
from moco_core.augment import params as P


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="mocov2")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--store-size", type=int, default=256)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--store-channels", type=int, default=None, help="default: --channels")
    p.add_argument("--peers", action="store_true", help="also roi_align and kornia (kornia==0.9.0)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    r = recipe(args.recipe, args.image_size, args.channels)
    n, s = args.batch_size, args.store_size
    images = torch.randint(
        0, 256, (n, args.store_channels or args.channels, s, s), dtype=torch.uint8, device=dev
    )
    pv = torch.stack([draw_view(r, random.Random(i), 1024, 1024) for i in range(n)]).to(dev)
    mean, std = normalization(args.channels, "imagenet")
    views = BatchViews(r, mean, std)
    flips, jitter, order = pv[:, P.FLIP] > 0.5, pv[:, P.JITTER] > 0.5, pv[:, P.ORDER].long()
    x = ops.resized_crops(images, pv[:, P.BOX], r.image_size, flips=flips)
    b, c, sat, hue = pv[:, P.FACTORS].unbind(1)
    rows = {
        "whole view": lambda: views(images, pv),
        "resized_crops": lambda: ops.resized_crops(images, pv[:, P.BOX], r.image_size, flips=flips),
        "color_jitter": lambda: ops.color_jitter(x, jitter, b, c, sat, hue, order),
        "  brightness (all samples)": lambda: ops.adjust_brightness(x, b),
        "  contrast (all samples)": lambda: ops.adjust_contrast(x, c),
        "  saturation (all samples)": lambda: ops.adjust_saturation(x, sat),
        "  hue (all samples)": lambda: ops.adjust_hue(x, hue),
        "grayscale": lambda: ops.grayscale(x, pv[:, P.GRAY] > 0.5),
        f"gaussian_blur (kernel {r.blur_kernel})": lambda: ops.gaussian_blur(
            x, pv[:, P.BLUR] > 0.5, pv[:, P.SIGMA], r.blur_kernel
        ),
        "normalize": lambda: ops.normalize(to_channels(x, r.channels), mean, std),
    }
    if args.peers:
        rows.update(peer_rows(images, pv, r, x))
    shape = f"{n} x {c} x {s} px -> {args.channels} x {r.image_size} px"
    print(f"{args.recipe}, {shape}, {dev}, {args.threads} thread(s)")
    for name, f in rows.items():
        check = ""
        if isinstance(f, tuple):  # a peer: (its call, the largest difference from ours)
            f, check = f[0], f"   max |ours - it| {f[1]:.1e}"
        print(f"{name:32s} {1000 * _time(f, dev, args.repeats, warmup=1):8.1f} ms{check}")
    return 0


def peer_rows(images: torch.Tensor, pv: torch.Tensor, r, x: torch.Tensor) -> dict:
    """The peers of ``resized_crops`` and ``gaussian_blur`` on the same batch, each with its largest
    difference from ours (crops compared away from a 2-pixel rim, where ours reads the pixels just
    outside the window and theirs replicate the window's edge)."""
    import kornia
    from torchvision.ops import roi_align

    n, _, s, _ = images.shape
    out = r.image_size
    flips = pv[:, P.FLIP] > 0.5
    x0, y0, w, h = (pv[:, P.BOX] * s).unbind(1)
    ours = ops.resized_crops(images, pv[:, P.BOX], out, flips=flips)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    rois = torch.stack((torch.arange(n, dtype=x0.dtype), x0, y0, x0 + w, y0 + h), dim=1).to(images.device)

    def roi() -> torch.Tensor:
        y = roi_align(images.float().div_(255), rois, out, 1.0, sampling_ratio=1, aligned=True)
        return torch.where(flips.view(-1, 1, 1, 1), y.flip(-1), y)

    corners = torch.stack((x0, y0, x0 + w - 1, y0, x0 + w - 1, y0 + h - 1, x0, y0 + h - 1), 1).view(n, 4, 2)
    corners = corners.to(images.device)

    def kornia_crop() -> torch.Tensor:
        y = kornia.geometry.transform.crop_and_resize(images.float().div_(255), corners, (out, out))
        return torch.where(flips.view(-1, 1, 1, 1), y.flip(-1), y)

    apply, sigma, k = pv[:, P.BLUR] > 0.5, pv[:, P.SIGMA], r.blur_kernel
    blurred = ops.gaussian_blur(x, apply, sigma, k)
    idx = torch.nonzero(apply).view(-1)

    def kornia_blur() -> torch.Tensor:
        sel = sigma[idx].to(x.device).view(-1, 1).expand(-1, 2)
        y = kornia.filters.gaussian_blur2d(x[idx], (k, k), sel, border_type="reflect", separable=True)
        return x.clone().index_copy_(0, idx, y)

    def diff(a: torch.Tensor, b: torch.Tensor, rim: bool = True) -> float:
        return float((a - b)[inner].abs().max() if rim else (a - b).abs().max())

    return {
        "peer: roi_align crops": (roi, diff(ours, roi())),
        "peer: kornia crop_and_resize": (kornia_crop, diff(ours, kornia_crop())),
        "peer: kornia gaussian_blur2d": (kornia_blur, diff(blurred, kornia_blur(), rim=False)),
    }


if __name__ == "__main__":
    sys.exit(main())
