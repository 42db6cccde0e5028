"""KeyQueue: the fixed-size FIFO dictionary of MoCo (He et al., 2020, Sec. 3.2).

Keys are stored column-wise (``dim x K``) so that the negative logits are one matrix product
``q @ queue`` with no transpose or copy. Any batch size works: writes wrap around the end, and a
batch larger than K keeps its newest K keys. The queue and its pointer are buffers, so they travel in
``state_dict`` (checkpoints) and move with ``.to(device)``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class KeyQueue(nn.Module):
    def __init__(self, dim: int, size: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"queue size must be > 0, got {size}")
        # Start from random unit vectors, as the reference implementation does.
        init = F.normalize(torch.randn(dim, size, generator=generator), dim=0)  # dim x K
        self.register_buffer("keys", init)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next column to write
        # host copy of ptr: reading the buffer would stall a GPU step on a device-to-host sync
        self._host_ptr: int | None = 0
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_host_ptr", None))

    @property
    def size(self) -> int:
        return self.keys.shape[1]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (N x dim) over the oldest entries, in order, wrapping around."""
        n = keys.shape[0]
        k = self.size
        if self._host_ptr is None:  # after load_state_dict
            self._host_ptr = int(self.ptr)
        start = ptr = self._host_ptr
        if n >= k:  # only the newest K keys survive; they end just before the new pointer
            keys = keys[n - k :]
            ptr = (ptr + n - k) % k
        m = keys.shape[0]
        first = min(m, k - ptr)
        kt = keys.t().to(self.keys.dtype)  # dim x m
        self.keys[:, ptr : ptr + first].copy_(kt[:, :first])
        if first < m:  # wrap around to the start
            self.keys[:, : m - first].copy_(kt[:, first:])
        self._host_ptr = (start + n) % k
        self.ptr.fill_(self._host_ptr)

    def ordered(self) -> torch.Tensor:
        """The keys oldest first (K x dim); for tests and inspection, not the hot path."""
        p = int(self.ptr)
        return torch.cat([self.keys[:, p:], self.keys[:, :p]], dim=1).t()
