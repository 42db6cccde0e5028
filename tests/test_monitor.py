"""The kNN monitor: the chunked vote against a one-hot hand computation, and the monitor sharded over
2 gloo processes equal to one process encoding everything."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn import functional as F

from moco_core.eval.knn import knn_scores

from .conftest import small_config


def _one_hot_votes(query, bank, labels, num_classes, k, t):
    """InstDisc's vote written the plain way: an M x k x C tensor of one-hot neighbour labels."""
    sim, idx = (query @ bank.t()).topk(k, dim=1)  # M x k
    w = (sim / t).exp()
    one_hot = F.one_hot(labels, num_classes).float()  # N x C
    return (w.unsqueeze(-1) * one_hot[idx]).sum(1) / w.sum(1, keepdim=True)


@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_chunked_scatter_vote_equals_the_one_hot_vote(chunk):
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(300, 16, generator=g), dim=1)
    query = F.normalize(torch.randn(50, 16, generator=g), dim=1)
    labels = torch.randint(0, 10, (300,), generator=g)
    got = knn_scores(query, bank, labels, k=20, t=0.1, chunk=chunk, num_classes=10)
    assert torch.allclose(got, _one_hot_votes(query, bank, labels, 10, 20, 0.1), atol=1e-6)
    assert torch.allclose(got.sum(1), torch.ones(50), atol=1e-5)
    multilabel = torch.randint(0, 2, (300, 3), generator=g).float()
    got = knn_scores(query, bank, multilabel, k=20, t=0.1, chunk=chunk)
    sim, idx = (query @ bank.t()).topk(20, dim=1)
    w = (sim / 0.1).exp()
    assert torch.allclose(got, (w.unsqueeze(-1) * multilabel[idx]).sum(1) / w.sum(1, keepdim=True), atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, root: str, out_dir: str) -> None:
    from moco_core.backbones import backbone_for
    from moco_core.data import read_dataset
    from moco_core.monitor import KnnMonitor, gather_rows

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        rows = torch.arange(rank, 11, world, dtype=torch.float32).view(-1, 1)  # this rank's rows of 11
        gathered = gather_rows(rows, 11, world)
        cfg = small_config(Path(root), Path(out_dir), "eval.knn_label_fraction=0.05")
        parts = read_dataset(root, partitions=("train", "val"))
        torch.manual_seed(0)
        backbone = backbone_for(cfg)
        monitor = KnnMonitor(cfg, parts, rank, world)
        result = {
            "gathered": gathered.flatten().tolist(),
            "value": monitor.measure(backbone),
            "encoded": sum(len(b.loader.dataset) for b in monitor.loaders.values()),
        }
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_monitor_sharded_over_two_gloo_ranks_equals_one_process(digits_root, tmp_path):
    from moco_core.backbones import backbone_for
    from moco_core.data import read_dataset
    from moco_core.monitor import KnnMonitor

    world = 2
    mp.spawn(_rank, args=(world, _free_port(), str(digits_root), str(tmp_path)), nprocs=world, join=True)
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    assert res[0]["gathered"] == res[1]["gathered"] == [float(i) for i in range(11)]  # partition order
    cfg = small_config(digits_root, tmp_path, "eval.knn_label_fraction=0.05")
    parts = read_dataset(digits_root, partitions=("train", "val"))
    torch.manual_seed(0)
    backbone = backbone_for(cfg)
    alone = KnnMonitor(cfg, parts)
    (expected,) = alone.measure(backbone).values()
    for r in res:
        assert r["value"]["eval/knn_top1"] == pytest.approx(expected, abs=1e-9)
    # only the bank's rows are encoded (5 % of train), each rank about half of them
    n_bank = len(alone.bank)
    assert n_bank < 0.07 * len(parts["train"])
    assert sum(r["encoded"] for r in res) == n_bank + len(parts["val"])
    assert np.ptp([r["encoded"] for r in res]) <= 2
