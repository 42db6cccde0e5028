"""The linear probe's lr x weight-decay grid trained in one batched loop against one point at a time
(the same function with a one-point grid), at the digits' and a chest X-ray test's feature sizes.

    .venv/bin/python bench/linear_probe_grid.py
"""

from __future__ import annotations

import time

import torch

from moco_core.eval.heads import LinearProbeConfig
from moco_core.eval.linear_probe import _train_linear_grid


def main() -> None:
    torch.manual_seed(0)
    cfg = LinearProbeConfig(epochs=0, min_steps=300)  # the figures of bench/RESULTS.md: 300 steps
    grid = [(lr, wd) for lr in cfg.lrs for wd in cfg.weight_decays]
    threads = torch.get_num_threads()
    print(f"grid of {len(grid)} points, {cfg.min_steps} steps of batch {cfg.batch_size}, {threads} threads")
    print("features          classes  one at a time (s)  batched (s)  speed-up  max |weight difference|")
    for n, d, c in ((1_078, 512, 10), (20_000, 2048, 14)):
        x, y = torch.randn(n, d), torch.randint(0, c, (n,))
        t = time.perf_counter()
        alone = [_train_linear_grid(x, y, c, "multiclass", [point], cfg, 0)[0] for point in grid]
        t_alone = time.perf_counter() - t
        t = time.perf_counter()
        batched = _train_linear_grid(x, y, c, "multiclass", grid, cfg, 0)
        t_batched = time.perf_counter() - t
        diff = max(float((a.weight - b.weight).detach().abs().max()) for a, b in zip(alone, batched))
        print(
            f"{n:>6} x {d:<8}  {c:>7}  {t_alone:>17.2f}  {t_batched:>11.2f}  "
            f"{t_alone / t_batched:>7.1f}x  {diff:.1e}"
        )


if __name__ == "__main__":
    main()
