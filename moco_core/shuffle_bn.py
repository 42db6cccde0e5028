"""Shuffling BN (He et al., 2020, Sec. 3.3).

Batch norm computes statistics over the batch; if a query and its key share those statistics the
model can find the positive through them ("cheating") and the pretext task stops teaching anything.
MoCo breaks that link by encoding the keys in a different batch composition than the queries:

* distributed: all ranks' key images are gathered, shuffled with one permutation broadcast from rank 0,
  each rank encodes its shard, and the keys are gathered back and unshuffled;
* single process (split BN): the key encoder's BN layers compute statistics over G groups of the
  (shuffled) batch separately, which emulates G devices on one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

# --------------------------------------------------------------------------------------------
# collectives


@torch.no_grad()
def concat_all_gather(t: torch.Tensor) -> torch.Tensor:
    """All ranks' ``t`` concatenated along dim 0 (rank order). Needs equal shapes. No gradient."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def batch_shuffle_distributed(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle the global batch across ranks.

    Args:
        x: this rank's images, N x ... (every rank the same N).

    Returns:
        This rank's shard of the shuffled global batch (N x ...), and the index that undoes the shuffle.
    """
    n_local = x.shape[0]
    x_all = concat_all_gather(x)  # (world*N) x ...
    world = x_all.shape[0] // n_local
    perm = torch.randperm(x_all.shape[0], device=x.device)
    if world > 1:
        dist.broadcast(perm, src=0)  # every rank uses rank 0's permutation
    idx_unshuffle = torch.argsort(perm)
    rank = dist.get_rank() if world > 1 else 0
    idx_this = perm.view(world, -1)[rank]
    return x_all[idx_this], idx_unshuffle


@torch.no_grad()
def batch_unshuffle_distributed(x: torch.Tensor, idx_unshuffle: torch.Tensor) -> torch.Tensor:
    """Undo :func:`batch_shuffle_distributed` on the encoded keys (N x C in, N x C out)."""
    n_local = x.shape[0]
    x_all = concat_all_gather(x)  # (world*N) x C
    world = x_all.shape[0] // n_local
    rank = dist.get_rank() if world > 1 else 0
    idx_this = idx_unshuffle.view(world, -1)[rank]
    return x_all[idx_this]


# --------------------------------------------------------------------------------------------
# single process


@torch.no_grad()
def batch_shuffle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Random permutation of the batch; returns the shuffled batch and the index that undoes it."""
    perm = torch.randperm(x.shape[0], device=x.device)
    return x[perm], torch.argsort(perm)


def batch_unshuffle(x: torch.Tensor, idx_unshuffle: torch.Tensor) -> torch.Tensor:
    return x[idx_unshuffle]


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed per group of the batch.

    Group ``j`` of ``G`` is the ``j``-th contiguous block of ``N / G`` samples (the batch is shuffled
    before the key encoder sees it, so which samples share a group is random). Same parameters and
    buffers (names and shapes) as :class:`nn.BatchNorm2d`, so a momentum update between a plain encoder
    and a split-BN copy lines up key by key. Eval mode is plain BN.
    """

    def __init__(self, num_features: int, num_splits: int, **kw) -> None:
        super().__init__(num_features, **kw)
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.num_splits
        if not self.training or g == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % g:  # uneven batch: one plain BN call per group
            return torch.cat([super(SplitBatchNorm2d, self).forward(chunk) for chunk in x.tensor_split(g)])
        # Splitting the batch dimension is a view in any memory format (channels_last included).
        xg = x.view(g, n // g, c, h, w)
        # statistics in fp32 whatever the activations' dtype (bf16 sums over N/G x H x W lose digits)
        var, mean = torch.var_mean(xg.float(), dim=(1, 3, 4), correction=0, keepdim=True)  # G x 1 x C x 1 x 1
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight.view(1, 1, c, 1, 1)
        shift = -mean * scale
        if self.affine:
            shift = shift + self.bias.view(1, 1, c, 1, 1)
        # one fused pass over the activations: x * scale + shift
        out = torch.addcmul(shift.to(x.dtype), xg, scale.to(x.dtype)).view(n, c, h, w)
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                count = (n // g) * h * w
                batch_mean = mean.mean(dim=0).view(c)
                batch_var = var.mean(dim=0).view(c) * (count / max(count - 1, 1))  # unbiased
                self.running_mean.lerp_(batch_mean.to(self.running_mean.dtype), m)
                self.running_var.lerp_(batch_var.to(self.running_var.dtype), m)
                self.num_batches_tracked.add_(1)
        return out


class SplitBatchNormAct2d(SplitBatchNorm2d):
    """timm's ``BatchNormAct2d`` (batch norm, then its ``drop`` and ``act`` modules, as in DenseNet and
    EfficientNet) with split statistics: the same children under the same names, so the state dict
    is the original's key by key."""

    def __init__(self, num_features: int, num_splits: int, drop: nn.Module, act: nn.Module, **kw) -> None:
        super().__init__(num_features, num_splits, **kw)
        self.drop = drop
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


def _is_batch_norm_act(module: nn.Module) -> bool:
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    return isinstance(module, BatchNormAct2d)


def convert_split_bn(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` (in place) by a :class:`SplitBatchNorm2d`, same state:
    ``nn.BatchNorm2d``, timm's ``BatchNormAct2d`` (its activation kept: :class:`SplitBatchNormAct2d`),
    and any subclass that keeps BatchNorm2d's forward. A module without batch norm (a ViT) is left as
    it is. A BatchNorm2d subclass with a forward of its own is refused: replacing it would change what
    it computes."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm2d):
            kw = dict(
                eps=child.eps,
                momentum=child.momentum,
                affine=child.affine,
                track_running_stats=child.track_running_stats,
            )
            if _is_batch_norm_act(child):
                new: SplitBatchNorm2d = SplitBatchNormAct2d(
                    child.num_features, num_splits, child.drop, child.act, **kw
                )
            elif type(child).forward is nn.BatchNorm2d.forward:
                new = SplitBatchNorm2d(child.num_features, num_splits, **kw)
            else:
                raise ValueError(
                    f"split BN cannot convert {name} ({type(child).__module__}.{type(child).__qualname__}, "
                    "a BatchNorm2d with a forward of its own); use moco.shuffle_bn: off, or distributed "
                    "with scaling.workers >= 2"
                )
            ref = child.weight if child.affine else child.running_mean
            if ref is not None:
                new = new.to(device=ref.device, dtype=ref.dtype)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            if child.affine:
                new.requires_grad_(child.weight.requires_grad)
            setattr(module, name, new)
        else:
            convert_split_bn(child, num_splits)
    return module
