"""Peak memory of a Ray Train worker against the number of images it trains on.

    python bench/worker_memory.py --images 60 240 --size 1024 --out /tmp/worker-memory [--loader-workers 2]

For each N: N 16-bit X-ray-like PNGs of SIZE x SIZE (nested folders, CSVs apart, as
``tests/test_store.py`` writes them), then ``moco pretrain experiments/digits.yaml`` on them through
Ray Train (one worker, ``--loader-workers`` loader processes, 2 steps at 32 px, the store prepared
on first use, the kNN monitor at the end), while the training worker's processes (the
``RayTrainWorker`` actor and its loader processes) are sampled every 50 ms. Prints one line per N:
the peak of their summed RSS (the figure measured before the store existed) and of their summed PSS
(pages shared between them counted once). The figure to read is the difference between N and 4N.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.test_store import xray_dataset  # noqa: E402  (the generator the memory test uses)


def train_worker_processes() -> list[psutil.Process]:
    """The RayTrainWorker actors of this machine and their children (the loader processes)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if "ray::RayTrainWorker" in " ".join(p.info["cmdline"] or []):
            out.append(p)
            out.extend(p.children(recursive=True))
    return out


def measure(root: Path, splits: Path, out: Path, loaders: int) -> tuple[int, int]:
    """Peak summed RSS and PSS of the training worker's processes during one ``moco pretrain``."""
    peak = {"rss": 0, "pss": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss = pss = 0
            for p in train_worker_processes():
                try:
                    info = p.memory_full_info()
                except psutil.Error:
                    continue
                rss, pss = rss + info.rss, pss + info.pss
            peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
            time.sleep(0.05)

    sets = {
        "data.root": root,
        "data.splits_dir": splits,
        "data.image_size": 32,
        "data.num_workers": loaders,
        "data.prepare": "auto",
        "data.store": out / "store",
        "scaling.cpus_per_worker": max(1, loaders),
        "optim.batch_size": 8,
        "optim.epochs": 1,
        "moco.queue_size": 16,
        "run.max_steps_per_epoch": 2,
        "run.storage_path": out / "runs",
        "tracking.uri": f"sqlite:///{out / 'mlflow.db'}",
        "tracking.register": "false",
        "eval.knn_label_fraction": 1.0,
    }
    argv = [sys.executable, "-m", "service.cli", "pretrain", str(REPO / "experiments/digits.yaml")]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        subprocess.run(argv, cwd=out, check=True, timeout=1800, env=dict(os.environ, OMP_NUM_THREADS="1"))
    finally:
        done.set()
        thread.join(timeout=5)
    return peak["rss"], peak["pss"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, nargs="+", default=[60, 240])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--loader-workers", type=int, default=1, help="data.num_workers (the digits recipe's: 1)")
    p.add_argument("--out", type=Path, required=True, help="an empty folder for the data, stores and runs")
    args = p.parse_args()
    for n in args.images:
        where = args.out / f"n{n}"
        root, splits = where / "data", where / "splits"
        if not (splits / "train.csv").exists():  # the images of an earlier run are reused
            xray_dataset(root, n, size=args.size, seed=n, splits_dir=splits)
        for old in ("store", "runs", "mlflow.db", "mlruns"):
            subprocess.run(["rm", "-rf", str(where / old)], check=True)
        rss, pss = measure(root, splits, where, args.loader_workers)
        print(f"{n} images of {args.size} px: peak RSS {rss / 2**20:.0f} MB, peak PSS {pss / 2**20:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
