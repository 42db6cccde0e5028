"""Does a recipe learn on real photographs at a CPU budget? MoCo against a random init, over seeds.

Pretrains ``--recipe`` (default: the MoCo CIFAR-10 demo) through ``moco pretrain`` on a local Ray cluster
(``--workers 1``: split BN; ``--workers 2``: gloo, distributed shuffle BN), then scores test kNN top-1
(k 200, T 0.1, backbone features, every train label in the bank) of the trained encoder and of a
random-init encoder of the same architecture and seed::

    python bench/cifar_learning.py --root ../shared/data/cifar10-dev --workers 1 --seeds 0 1 2
    python bench/cifar_learning.py --root ../shared/data/cifar10-dev --workers 2 --seeds 0 1 2

Prints one line per seed and the mean difference.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from moco_core.backbones import backbone_for
from moco_core.checkpoint import backbone_from_checkpoint, load_checkpoint
from moco_core.config import load_config
from moco_core.data import read_dataset
from moco_core.eval import ProtocolSettings, Task, run_protocols
from service.pretrain import pretrain
from service.progress import ProgressPrinter

REPO = Path(__file__).resolve().parents[1]


def knn_test_top1(cfg, backbone: torch.nn.Module) -> float:
    parts = read_dataset(cfg.data.root, partitions=("train", "val", "test"))
    settings = ProtocolSettings(knn_k=200, knn_t=0.1, bootstrap=0)
    (result,) = run_protocols(backbone, Task(parts, cfg.data), ["knn"], [1.0], settings, seed=cfg.run.seed)
    return result.value


def one_seed(args: argparse.Namespace, seed: int, work: Path) -> tuple[float, float, float]:
    overrides = [
        f"data.root={Path(args.root).resolve()}",
        f"data.num_workers={args.loader_workers}",
        f"optim.batch_size={args.batch}",
        f"optim.lr={args.lr}",
        f"optim.epochs={args.epochs}",
        f"scaling.workers={args.workers}",
        f"scaling.cpus_per_worker={args.cpus_per_worker}",
        "scaling.use_gpu=false",
        f"run.seed={seed}",
        "run.checkpoint_every_epochs=1",
        "eval.knn_every_epochs=0",
        f"run.storage_path={work / 'runs'}",
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
        "tracking.register=false",
        *args.set,
    ]
    cfg = load_config(REPO / "experiments" / args.recipe, overrides)
    t0 = time.monotonic()
    result = pretrain(cfg, printer=ProgressPrinter(every_s=60))
    took = time.monotonic() - t0
    trained = backbone_from_checkpoint(cfg, load_checkpoint(result.checkpoint_path))
    torch.manual_seed(seed)
    random_init = backbone_for(cfg)
    return knn_test_top1(cfg, trained), knn_test_top1(cfg, random_init), took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--root", required=True, help="a labelled dataset in the seed layout (CIFAR-10 photographs)"
    )
    p.add_argument("--recipe", default="cifar_reference_r18.yaml", help="a file of experiments/")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cpus-per-worker", type=int, default=None, help="default: 2 / workers")
    p.add_argument("--loader-workers", type=int, default=0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    args = p.parse_args()
    args.cpus_per_worker = args.cpus_per_worker or max(1, 2 // args.workers)
    diffs = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="moco-cifar-") as tmp:
            ours, base, took = one_seed(args, seed, Path(tmp))
        diffs.append(ours - base)
        print(
            f"seed {seed}: MoCo {ours:.4f}  random init {base:.4f}  difference {ours - base:+.4f}  "
            f"(pretraining {took:.0f} s)",
            flush=True,
        )
    spread = f" (min {min(diffs):+.4f}, max {max(diffs):+.4f})" if len(diffs) > 1 else ""
    print(f"mean difference over {len(diffs)} seed(s): {statistics.mean(diffs):+.4f}{spread}")


if __name__ == "__main__":
    main()
