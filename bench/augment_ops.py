"""Where a batch's views spend their time: each op of ``BatchViews`` timed alone on one batch of uint8
store images, on the CPU or a GPU.

    python bench/augment_ops.py --image-size 224 --store-size 256 --batch-size 64 --threads 1

Prints one line per op (the median milliseconds per batch of one view) and the whole view; the
parameters are the recipe's own draws (seeded), so each op runs on the share of samples it applies to
(the four colour adjustments alone run on all of them).
"""

from __future__ import annotations

import argparse
import random
import sys

import torch
from step_overhead import _time  # this folder is on sys.path when run as bench/augment_ops.py

from moco_core.augment import BatchViews, draw_view, normalization, ops, recipe
from moco_core.augment import params as P


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="mocov2")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--store-size", type=int, default=256)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    r = recipe(args.recipe, args.image_size, args.channels)
    n, s = args.batch_size, args.store_size
    images = torch.randint(0, 256, (n, args.channels, s, s), dtype=torch.uint8, device=dev)
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
        "normalize": lambda: ops.normalize(x, mean, std),
    }
    print(
        f"{args.recipe}, {n} x {args.channels} x {s} px -> {r.image_size} px, {dev}, {args.threads} thread(s)"
    )
    for name, f in rows.items():
        print(f"{name:32s} {1000 * _time(f, dev, args.repeats, warmup=1):8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
