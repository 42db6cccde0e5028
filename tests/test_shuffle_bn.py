"""Shuffle BN: shuffle/unshuffle identity, split BN statistics, and the real gloo collectives."""

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from moco_core.shuffle_bn import (
    SplitBatchNorm2d,
    batch_shuffle,
    batch_shuffle_distributed,
    batch_unshuffle,
    batch_unshuffle_distributed,
    concat_all_gather,
    convert_split_bn,
)


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_shuffle_then_unshuffle_is_identity(n):
    x = torch.arange(n * 3, dtype=torch.float32).view(n, 3)
    shuffled, idx = batch_shuffle(x)
    assert sorted(shuffled[:, 0].tolist()) == x[:, 0].tolist()  # a permutation
    assert torch.equal(batch_unshuffle(shuffled, idx), x)


def test_shuffle_changes_order():
    torch.manual_seed(0)
    x = torch.arange(64.0).view(64, 1)
    shuffled, _ = batch_shuffle(x)
    assert not torch.equal(shuffled, x)


def test_split_bn_uses_per_group_statistics():
    torch.manual_seed(0)
    bn = SplitBatchNorm2d(3, num_splits=2).train()
    # two groups with very different means: per-group BN centres each group on its own mean
    a = torch.randn(4, 3, 2, 2)
    b = torch.randn(4, 3, 2, 2) + 10.0
    x = torch.cat([a, b])  # group 0 is the first half of the batch, group 1 the second
    out = bn(x)
    for group in (out[:4], out[4:]):
        assert torch.allclose(group.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    plain = nn.BatchNorm2d(3).train()(x)
    assert plain[:4].mean() < -0.5  # plain BN leaves the first group far below zero
    # each group normalised alone gives the same result, gradients included
    ref = nn.BatchNorm2d(3).train()
    assert torch.allclose(out[:4], ref(a), atol=1e-5)
    assert torch.allclose(out[4:], nn.BatchNorm2d(3).train()(b), atol=1e-5)
    out.sum().backward()
    assert bn.weight.grad is not None


def test_split_bn_uneven_batch_and_eval_mode():
    bn = SplitBatchNorm2d(2, num_splits=3).train()
    x = torch.randn(7, 2, 3, 3)
    out = bn(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.allclose(out[3:5], nn.BatchNorm2d(2).train()(x[3:5]), atol=1e-5)  # groups of 3, 2, 2
    bn.eval()
    assert torch.allclose(
        bn(x), nn.functional.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias)
    )


def test_split_bn_running_stats_average_groups():
    bn = SplitBatchNorm2d(1, num_splits=2, momentum=1.0).train()
    x = torch.tensor([0.0, 0.0, 4.0, 4.0]).view(4, 1, 1, 1)  # group 0: zeros, group 1: fours
    bn(x)
    assert torch.allclose(bn.running_mean, torch.tensor([2.0]))  # mean of the group means 0 and 4


def test_split_bn_channels_last_matches_contiguous():
    bn = SplitBatchNorm2d(4, num_splits=4).train()
    x = torch.randn(8, 4, 5, 5)
    a = bn(x)
    b = bn(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(a, b, atol=1e-5)


def test_convert_keeps_state_dict_keys():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    keys = list(net.state_dict())
    convert_split_bn(net, 4)
    assert list(net.state_dict()) == keys
    assert isinstance(net[1], SplitBatchNorm2d) and isinstance(net[2][0], SplitBatchNorm2d)


class _PlainSubclass(nn.BatchNorm2d):  # BatchNorm2d's own forward: converted
    pass


class _OwnForward(nn.BatchNorm2d):  # a forward of its own: replacing it would change what it computes
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


def test_convert_refuses_a_batch_norm_with_a_forward_of_its_own():
    net = nn.Sequential(_PlainSubclass(4))
    assert isinstance(convert_split_bn(net, 2)[0], SplitBatchNorm2d)
    with pytest.raises(ValueError, match=r"split BN cannot convert 1 .*_OwnForward.*moco\.shuffle_bn: off"):
        convert_split_bn(nn.Sequential(nn.Conv2d(1, 4, 3), _OwnForward(4)), 2)


def test_split_bn_statistics_are_fp32_under_bf16_activations():
    torch.manual_seed(0)
    x = (torch.randn(64, 3, 16, 16) * 0.01 + 3.0).to(torch.bfloat16)  # a large mean, a small spread
    bn = SplitBatchNorm2d(3, num_splits=4, momentum=1.0).train()
    bn(x)
    exact = x.float().view(4, 16, 3, 16, 16).var(dim=(1, 3, 4), correction=0).mean(dim=0)
    count = 16 * 16 * 16
    assert torch.allclose(bn.running_var, exact * count / (count - 1), rtol=1e-4)
    bf16_var = torch.var_mean(x.view(4, 16, 3, 16, 16), dim=(1, 3, 4), correction=0)[0].float().mean(dim=0)
    assert not torch.allclose(bf16_var, exact, rtol=1e-4)  # bf16 statistics: rounded to 8 bits


def test_split_bn_converts_both_encoders_with_the_same_keys():
    from moco_core.config import ExperimentConfig
    from moco_core.model import build_moco

    cfg = ExperimentConfig.model_validate(
        {
            "data": {"image_size": 8},
            "moco": {"queue_size": 16, "split_bn_groups": 2},
            "optim": {"batch_size": 8},
        }
    )
    split, plain = build_moco(cfg, world_size=1), build_moco(cfg, world_size=2)  # split BN | distributed
    for encoder in (split.encoder_q, split.encoder_k):
        bns = [m for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and all(isinstance(m, SplitBatchNorm2d) and m.num_splits == 2 for m in bns)
    assert not any(isinstance(m, SplitBatchNorm2d) for m in plain.modules())
    assert list(split.state_dict()) == list(plain.state_dict())  # checkpoints and exports line up


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"optim": {"batch_size": 12}, "moco": {"split_bn_groups": 8}}, "multiple of 8"),
        ({"optim": {"batch_size": 20}, "moco": {"split_bn_groups": 8}}, "multiple of 8"),
        (
            {
                "optim": {"batch_size": 24},
                "moco": {"shuffle_bn": "split", "split_bn_groups": 8},
                "scaling": {"workers": 2},
            },
            "each worker's 12 images",
        ),
    ],
)
def test_split_bn_groups_must_divide_each_workers_batch(overrides, message):
    from moco_core.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=message):
        config_from_dict(overrides)


# ---------------------------------------------------------------------------------------------
# the distributed path, for real: 2 processes, gloo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # different local RNGs: the permutation must still agree
        n = 8
        x = (torch.arange(n, dtype=torch.float32) + 1000 * rank).view(n, 1)  # rank r owns r*1000 + i
        shard, idx = batch_shuffle_distributed(x)
        restored = batch_unshuffle_distributed(shard, idx)
        gathered = concat_all_gather(x)
        result = {
            "shard": shard.flatten().tolist(),
            "restored": restored.flatten().tolist(),
            "idx": idx.tolist(),
            "gathered": gathered.flatten().tolist(),
        }
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_distributed_shuffle_with_gloo(tmp_path):
    """Results come back through files: no forked helper process (a fork of a process that holds a
    Ray connection, as the test session does, can leave that connection unusable)."""
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    res = {r: json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)}
    everything = sorted(v for r in range(world) for v in [i + 1000 * r for i in range(8)])
    # every rank holds the same gathered batch and the same unshuffle index
    assert res[0]["gathered"] == res[1]["gathered"] == [float(v) for v in everything]
    assert res[0]["idx"] == res[1]["idx"]
    # the shards are different and together are the whole batch, mixed across ranks
    s0, s1 = res[0]["shard"], res[1]["shard"]
    assert s0 != s1 and sorted(s0 + s1) == [float(v) for v in everything]
    assert any(v >= 1000 for v in s0) or any(v < 1000 for v in s1)  # images crossed ranks
    # unshuffle restores each rank's own batch, in order
    for r in range(world):
        assert res[r]["restored"] == [float(i + 1000 * r) for i in range(8)]
