"""The data path's throughput: two-view batches from the prepared store through the whole path (read
in loader workers, transfer to the device, the views of the batch made there), against lightly's
MoCoV2Transform in a DataLoader with the same workers on the same files, measured in the same run.

    python bench/data_path.py --make-xrays 256 --root /tmp/xrays        # 1024 x 1024 gray PNGs
    python bench/data_path.py --root /tmp/xrays --image-size 224 --recipe mocov2 --workers 2 \
        --batches 20 --peer lightly --store-channels 1     # gray X-rays kept in one channel
    python bench/data_path.py --root ../shared/data/cifar10-dev --image-size 32 --recipe mocov2 \
        --workers 2 --batches 40 --peer lightly

Prints ``prepare: ...`` (decoding once into the store, timed apart), ``images/s: X`` and, with
``--peer lightly``, ``lightly images/s: Y``. An image counts once per pair of views.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from moco_core.config import ExperimentConfig
from moco_core.data import read_dataset
from moco_core.pipeline import pretrain_loader
from moco_core.store import prepare_here, read_index


def make_xrays(root: Path, n: int, size: int = 1024) -> None:
    """``n`` gray X-ray-like PNGs of ``size`` x ``size`` in ``root/train`` (and a small val/test)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] / size
    for part, count in (("train", n), ("val", 8), ("test", 8)):
        (root / part).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(count):
            lungs = np.exp(-(((xx - 0.35) / 0.12) ** 2 + ((yy - 0.5) / 0.25) ** 2))
            lungs += np.exp(-(((xx - 0.65) / 0.12) ** 2 + ((yy - 0.5) / 0.25) ** 2))
            a = 200 - 120 * lungs + rng.normal(0, 12, (size, size))
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(root / part / f"{i:05d}.png")
            rows.append((f"{i:05d}.png", i % 2))
        with open(root / f"{part}.csv", "w", newline="") as f:
            csv.writer(f).writerows([("Path", "Finding"), *rows])


def _rate(batches, n: int, batch: int, device: torch.device, warmup: int = 2) -> float:
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        out = next(it)
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert out is not None
    return n * batch / (time.perf_counter() - t0)


def ours(args: argparse.Namespace, store: str, device: torch.device) -> float:
    data = {"root": args.root, "splits_dir": args.splits_dir, "image_size": args.image_size}
    data.update(channels=args.channels, store=store, num_workers=args.workers, store_size=args.store_size)
    cfg = ExperimentConfig.model_validate(
        {
            "data": data,
            "augment": {"recipe": args.recipe},
            "optim": {"batch_size": args.batch_size},
            "scaling": {"cpus_per_worker": max(1, args.workers)},
        }
    )
    train = read_dataset(args.root, args.splits_dir, partitions=("train",))["train"]
    loader = pretrain_loader(cfg, train, device=device)
    loader.sampler.set_epoch(0)

    def forever():
        epoch = 0
        while True:
            loader.sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    return _rate(forever(), args.batches, args.batch_size, device)


def lightly_rate(args: argparse.Namespace) -> float:
    from lightly.transforms import MoCoV2Transform

    transform = MoCoV2Transform(input_size=args.image_size)
    train = read_dataset(args.root, args.splits_dir, partitions=("train",))["train"]

    class Files(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(train)

        def __getitem__(self, i: int):
            with Image.open(train.paths[i]) as im:
                views = transform(im.convert("RGB"))
            return views[0], views[1]

    loader = torch.utils.data.DataLoader(
        Files(), batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True,
        persistent_workers=args.workers > 0,
    )  # fmt: skip

    def forever():
        while True:
            yield from loader

    return _rate(forever(), args.batches, args.batch_size, torch.device("cpu"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True)
    p.add_argument("--splits-dir", default=None)
    p.add_argument("--make-xrays", type=int, default=0, metavar="N", help="write N 1024 px PNGs to --root")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--store-size", type=int, default=None, help="default: data.store_size's default")
    p.add_argument("--channels", type=int, default=3, help="data.channels: the model's input")
    p.add_argument(
        "--store-channels",
        type=int,
        default=None,
        help="the store's (default: --channels; 1: gray)",
    )
    p.add_argument("--recipe", default="mocov2")
    p.add_argument("--workers", type=int, default=2, help="loader processes (ours and the peer's)")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--store", default=None, help="an existing store (default: prepare one in a temp dir)")
    p.add_argument("--peer", choices=["lightly"], default=None)
    args = p.parse_args()
    if args.make_xrays:
        make_xrays(Path(args.root), args.make_xrays)
        print(f"wrote {args.make_xrays} 1024 x 1024 PNGs to {args.root}")
        return 0
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="moco-bench-store-") as tmp:
        store = args.store
        if store is None:
            from moco_core.store import default_store_size

            parts = read_dataset(args.root, args.splits_dir, partitions=("train",))
            size = args.store_size or default_store_size(args.image_size)
            t0 = time.perf_counter()
            source = {"root": str(args.root)}
            channels = args.store_channels or args.channels
            prepare_here(tmp, parts, size, channels, source, threads=max(1, args.workers))
            dt, n = time.perf_counter() - t0, len(parts["train"])
            print(f"prepare: {n} images in {dt:.1f} s ({n / dt:.0f} images/s)")
            store = tmp
        index = read_index(store)
        print(f"store: {index['size']} px, {index['channels']} channel(s); views: {args.channels} channel(s)")
        print(f"images/s: {ours(args, store, device):.0f}")
        if args.peer == "lightly":
            print(f"lightly images/s: {lightly_rate(args):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
