"""GPU checks of the training path without Ray: bf16 autocast, channels_last, split BN, and the
distributed shuffle-BN path on NCCL (as many ranks as there are GPUs; one GPU gives one rank).

    python bench/gpu_smoke.py --out /tmp/gpu_smoke

Writes the digits dataset, trains ``experiments/digits.yaml`` shrunk to 2 epochs on ``cuda`` and prints
throughput, loss and kNN accuracy of the trained encoder against a random-init one.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moco_core.backbones import backbone_for
from moco_core.config import load_config
from moco_core.data import read_dataset
from moco_core.digits import write_digits
from moco_core.engine import build_train_state, fit
from moco_core.eval import extract_features, knn_metric
from moco_core.pipeline import eval_loader, pretrain_loader, steps_per_epoch

REPO = Path(__file__).resolve().parents[1]


def _cfg(root: Path, *extra: str):
    return load_config(
        REPO / "experiments" / "digits.yaml",
        [
            f"data.root={root}",
            "data.image_size=32",
            "data.num_workers=4",
            "optim.epochs=2",
            "optim.batch_size=256",
            "moco.queue_size=4096",
            "scaling.use_gpu=true",
            *extra,
        ],
    )


def single_gpu(root: Path) -> None:
    cfg = _cfg(root)
    dev = torch.device("cuda")
    parts = read_dataset(root, partitions=("train", "val"))
    loader = pretrain_loader(cfg, parts["train"], device=dev)
    state = build_train_state(cfg, steps_per_epoch(len(parts["train"]), cfg), device=dev)
    t0 = time.perf_counter()
    hist = fit(state, loader, cfg, dev)
    torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    el = {k: eval_loader(cfg.data, p, device=dev) for k, p in parts.items()}

    def knn(bb):
        f_tr = extract_features(bb, el["train"], dev)
        f_va = extract_features(bb, el["val"], dev)
        return knn_metric(
            f_tr, parts["train"].targets, f_va, parts["val"].targets, "multiclass", 10, k=cfg.eval.knn_k
        )[1]

    torch.manual_seed(0)
    rand = backbone_for(cfg).to(dev)
    print(
        f"single GPU ({torch.cuda.get_device_name()}), bf16 autocast, split BN: "
        f"{hist[-1]['train/images_per_s']:.0f} img/s in the last epoch, {secs:.1f} s for 2 epochs, "
        f"loss {hist[-1]['train/loss']:.3f}, kNN top-1 {knn(state.model.encoder_q.backbone):.4f} "
        f"vs random init {knn(rand):.4f}"
    )


def _nccl_worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    cfg = _cfg(
        Path(root),
        f"scaling.workers={world}",
        "moco.shuffle_bn=distributed" if world > 1 else "moco.shuffle_bn=off",
        "optim.epochs=1",
    )
    dev = torch.device("cuda", rank)
    parts = read_dataset(root, partitions=("train",))
    loader = pretrain_loader(cfg, parts["train"], rank, world, dev)
    state = build_train_state(cfg, steps_per_epoch(len(parts["train"]), cfg), world, dev)
    if world == 1:  # exercise the distributed shuffle and gather collectives on NCCL with one rank
        state.model.shuffle = "distributed"
    fwd = torch.nn.parallel.DistributedDataParallel(state.model, device_ids=[rank], broadcast_buffers=False)
    hist = fit(state, loader, cfg, dev, forward=fwd, world_size=world)
    keys = state.model.queue.keys.clone()
    ref = keys.clone()
    dist.broadcast(ref, 0)
    same = bool(torch.equal(keys, ref))
    if rank == 0:
        print(
            f"NCCL, {world} rank(s), distributed shuffle BN + all-gathered enqueue: loss "
            f"{hist[-1]['train/loss']:.3f}, "
            f"{hist[-1]['train/images_per_s']:.0f} img/s, queues identical: {same}"
        )
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/gpu_smoke")
    args = p.parse_args()
    root = Path(args.out) / "digits"
    if not (root / "train.csv").exists():
        write_digits(root)
    single_gpu(root)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    world = torch.cuda.device_count()
    mp.spawn(_nccl_worker, args=(world, port, str(root)), nprocs=world, join=True)


if __name__ == "__main__":
    main()
