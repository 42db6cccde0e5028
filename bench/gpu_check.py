"""The checks of the GPU path, in one command, for whenever a GPU machine is lent (at most ~8 minutes on
one GPU); paste its output into bench/RESULTS.md.

    python bench/gpu_check.py --out /tmp/gpu_check            # on the GPU machine
    python bench/gpu_check.py --out /tmp/gpu_check --device cpu --quick   # a dry run of the script here

1. Resume on the device: train 2 epochs straight; train 1, checkpoint, restore into a fresh state on the
   device (the file is read onto the CPU), train 1 more; the two must agree (step, queue, loss).
2. Seeding: drawing each view's parameters leaves the CPU's and the device's RNG alone (the shuffle-BN
   permutation must not become a function of the last image).
3. Precision: the logits stay fp32 under autocast; the precision `auto` picks on this device.
4. The step table of bench/step_overhead.py: ResNet-50 224 px bf16 and fp16, ResNet-18 32 px bf16,
   with torch.compile off and on (ResNet-18) -- MoCo's own share of a step, split BN in both encoders.
5. NCCL with one rank: bench/gpu_smoke.py (distributed shuffle BN, all-gathered enqueue).
6. The data path on the device: bench/data_path.py, two mocov2 views at 224 px from 1024 x 1024 PNGs
   through the store, 8 loader processes (target: >= 2,500 images/s, the ResNet-50 bf16 step rate);
   from a three-channel store, then from a one-channel (gray) one.
Each check prints ``PASS`` / ``FAIL`` or its table; the exit code is 1 when a check failed. Every
check ends within ``--budget-s`` (480 s) of the start: one still running then is stopped and FAILs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from moco_core.augment import recipe
from moco_core.checkpoint import restore, save_checkpoint
from moco_core.config import ExperimentConfig
from moco_core.engine import build_train_state, train_step
from moco_core.loss import moco_logits
from moco_core.pipeline import PretrainSamples
from moco_core.precision import autocast, resolve_precision

REPO = Path(__file__).resolve().parents[1]


def _cfg(device: torch.device) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "data": {"image_size": 32, "channels": 3},
            "moco": {"queue_size": 1024, "split_bn_groups": 4},
            "optim": {"batch_size": 64, "epochs": 2},
            "scaling": {"use_gpu": device.type == "cuda"},
        }
    )


def _train(state, cfg, device, steps: int, batches) -> list[float]:
    losses = []
    for _ in range(steps):
        x_q, x_k = batches[state.step % len(batches)]
        losses.append(
            train_step(state.model, state, x_q.to(device), x_k.to(device), cfg, device)["train/loss"]
        )
    return losses


def check_resume(device: torch.device, out: Path) -> bool:
    cfg, spe = _cfg(device), 3
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(64, 3, 32, 32, generator=g), torch.randn(64, 3, 32, 32, generator=g)) for _ in range(6)
    ]
    straight = build_train_state(cfg, spe, device=device)
    ref = _train(straight, cfg, device, 2 * spe, batches)
    first = build_train_state(cfg, spe, device=device)
    _train(first, cfg, device, spe, batches)
    save_checkpoint(first, out / "resume")
    resumed = build_train_state(cfg, spe, device=device)
    restore(resumed, out / "resume")
    got = _train(resumed, cfg, device, spe, batches)
    same_queue = torch.allclose(resumed.model.queue.keys, straight.model.queue.keys, atol=1e-3)
    ok = resumed.step == straight.step and same_queue and abs(got[-1] - ref[-1]) < 1e-2 * abs(ref[-1])
    print(
        f"1. resume on {device}: step {resumed.step} vs {straight.step}, last loss {got[-1]:.4f} vs "
        f"{ref[-1]:.4f}, queues equal: {same_queue}: {'PASS' if ok else 'FAIL'}"
    )
    return ok


def check_seeding(device: torch.device) -> bool:
    class Images:
        def __len__(self) -> int:
            return 4

        def item(self, i: int):
            return np.zeros((3, 8, 8), dtype=np.uint8), (8, 8)

    samples = PretrainSamples(Images(), recipe("mocov2", 8, 3), seed=0)
    states = (torch.random.get_rng_state, torch.cuda.get_rng_state if device.type == "cuda" else None)
    before = [f() for f in states if f is not None]
    samples[(1, 0)]
    after = [f() for f in states if f is not None]
    ok = all(torch.equal(a, b) for a, b in zip(before, after))
    print(f"2. drawing the views' parameters leaves the RNGs unchanged: {'PASS' if ok else 'FAIL'}")
    return ok


def check_precision(device: torch.device) -> bool:
    q = torch.nn.functional.normalize(torch.randn(64, 128, device=device), dim=1)
    queue = torch.nn.functional.normalize(torch.randn(128, 4096, device=device), dim=0)
    exact = (q @ queue) / 0.2
    ok = True
    for precision in ("bf16", "fp16"):
        with autocast(device, precision):
            logits = moco_logits(q, q, queue, 0.2)
        err = (logits[:, 1:] - exact).abs().max().item()
        ok &= logits.dtype == torch.float32 and err < 1e-4
        print(f"3. logits under {precision} autocast: {logits.dtype}, max error {err:.2e}")
    print(
        f"   run.precision auto on {device}: {resolve_precision('auto', device)}: {'PASS' if ok else 'FAIL'}"
    )
    return ok


DEADLINE = [float("inf")]  # time.monotonic() by which every check has ended (--budget-s)


def run(cmd: list[str], timeout_s: float) -> bool:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.monotonic()
    timeout_s = min(timeout_s, DEADLINE[0] - t0)
    if timeout_s < 5:
        print("   not run: the script's time budget (--budget-s) is spent: FAIL")
        return False
    try:
        proc = subprocess.run(cmd, cwd=REPO, timeout=timeout_s, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        print(f"   timed out after {timeout_s:.0f} s: FAIL")
        return False
    print(proc.stdout.strip())
    if proc.returncode:
        print(proc.stderr.strip()[-2000:])
    print(f"   ({time.monotonic() - t0:.0f} s) {'PASS' if proc.returncode == 0 else 'FAIL'}", flush=True)
    return proc.returncode == 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="a scratch folder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny step tables (a dry run of the script)")
    p.add_argument("--budget-s", type=float, default=480.0, help="every check ends within this (8 minutes)")
    args = p.parse_args()
    DEADLINE[0] = time.monotonic() + args.budget_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"# {name}, torch {torch.__version__}\n")
    ok = [check_resume(device, out), check_seeding(device), check_precision(device)]
    step = [sys.executable, "bench/step_overhead.py", "--device", args.device, "--queue-sizes", "65536"]
    small = ["--iters", "3", "--warmup", "1", "--batch", "16"] if args.quick else []
    size = "64" if args.quick else "224"
    r50 = ["--arch", "resnet50", "--image-size", size, "--batch", "256", "--iters", "20"]
    r18 = ["--arch", "resnet18", "--image-size", "32", "--batch", "512", "--iters", "50", "--warmup", "10"]
    tables = [
        [*r50, "--precision", "bf16"],
        [*r50, "--precision", "fp16"],
        [*r18, "--precision", "bf16"],
        [*r18, "--precision", "bf16", "--compile"],
    ]
    if args.quick:  # a dry run: one small table (fp16 and compile are GPU matters)
        tables = [tables[2]]
    print("\n4. step tables (bench/step_overhead.py)")
    for extra in tables:
        ok.append(run([*step, *extra, *small], timeout_s=240))
    if device.type == "cuda":
        print("\n5. NCCL, one rank (bench/gpu_smoke.py)")
        ok.append(run([sys.executable, "bench/gpu_smoke.py", "--out", str(out / "smoke")], timeout_s=240))
    print("\n6. the data path (bench/data_path.py)")
    xrays = out / "xrays"
    n = "64" if args.quick else "256"
    ok.append(run([sys.executable, "bench/data_path.py", "--make-xrays", n, "--root", str(xrays)], 300))
    path = [sys.executable, "bench/data_path.py", "--root", str(xrays), "--device", args.device]
    path += ["--image-size", "64" if args.quick else "224", "--recipe", "mocov2"]
    path += ["--workers", "2" if args.quick else "8", "--batch-size", "32" if args.quick else "256"]
    ok.append(run([*path, "--batches", "3" if args.quick else "30"], timeout_s=300))
    ok.append(run([*path, "--batches", "3" if args.quick else "30", "--store-channels", "1"], timeout_s=300))
    print(f"\n{sum(ok)} of {len(ok)} checks passed")
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
