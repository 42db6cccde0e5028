"""MoCo's own cost per training step, against the backbone passes alone.

A = one full MoCo step (``moco_core.engine.train_step``): shuffle BN, key encoder forward, query encoder
forward + backward, logits against the queue, InfoNCE, SGD step, enqueue, momentum update.
B = the backbone passes alone on the same batch: encoder_q forward + backward, a key encoder forward
(no grad, plain BN), the same SGD step. MoCo's own work is (A - B) / A; the target is <= 3 %.

    python bench/step_overhead.py --device cpu --arch resnet18 --image-size 32 --batch 64 --iters 5
    python bench/step_overhead.py --device cuda --arch resnet50 --image-size 224 --batch 256 --precision bf16

Prints a Markdown table (one row per queue size) and, with --json, writes the numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from moco_core.config import ExperimentConfig
from moco_core.engine import build_train_state, train_step
from moco_core.precision import autocast


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(args: argparse.Namespace, queue_size: int) -> dict:
    device = torch.device(args.device)
    cfg = ExperimentConfig.model_validate(
        {
            "data": {"image_size": args.image_size, "channels": 3},
            "model": {"arch": args.arch, "small_image_stem": args.image_size <= 64, "head": "mlp"},
            "moco": {"queue_size": queue_size, "shuffle_bn": args.shuffle_bn, "split_bn_groups": 8},
            "optim": {"batch_size": args.batch, "epochs": 1},
            "run": {"precision": args.precision, "channels_last": args.channels_last},
        }
    )
    state = build_train_state(cfg, steps_per_epoch=10**6, device=device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x_q = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device).contiguous(
        memory_format=fmt
    )
    x_k = torch.randn_like(x_q)
    model = state.model
    plain_k = copy.deepcopy(model.encoder_q).requires_grad_(False)  # plain BN: the bare backbone cost

    forward = torch.compile(model) if args.compile else model

    def moco_step():
        train_step(forward, state, x_q, x_k, cfg, device)

    def backbone_only():
        with autocast(device, cfg.run.precision):
            with torch.no_grad():
                plain_k(x_k)
            out = model.encoder_q(x_q)
            loss = out.float().pow(2).mean()
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()

    a = _time(moco_step, device, args.iters, args.warmup)
    b = _time(backbone_only, device, args.iters, args.warmup)
    a2 = _time(moco_step, device, args.iters, 1)  # again: the spread between a and a2 is the noise
    return {
        "queue_size": queue_size,
        "moco_step_ms": 1000 * min(a, a2),
        "moco_step_ms_repeat": 1000 * max(a, a2),
        "backbone_ms": 1000 * b,
        "overhead_pct": 100 * (min(a, a2) - b) / min(a, a2),
        "images_per_s": args.batch / min(a, a2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--queue-sizes", type=int, nargs="+", default=[4096, 65536])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--shuffle-bn", default="split", choices=["split", "off"])
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--compile", action="store_true", help="torch.compile the MoCo model (run.compile)")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json", default=None, help="write the rows to this file")
    args = p.parse_args()
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = [measure(args, k) for k in args.queue_sizes]
    dev = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(
        f"\n{dev}, {args.arch}, {args.image_size}px, batch {args.batch}, precision {args.precision}, "
        f"shuffle BN {args.shuffle_bn}, channels_last {args.channels_last}, compile {args.compile}\n"
    )
    print("| K | MoCo step (ms) | repeat (ms) | backbone passes (ms) | MoCo's own share | images/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['queue_size']} | {r['moco_step_ms']:.1f} | {r['moco_step_ms_repeat']:.1f} | "
            f"{r['backbone_ms']:.1f} | {r['overhead_pct']:.1f} % | {r['images_per_s']:.0f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev, "args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
