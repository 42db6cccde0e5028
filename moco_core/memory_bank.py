"""Memory bank: one stored feature per training image (Wu et al. 2018; the "memory bank" mechanism of
the MoCo paper's Fig. 3).

The positive of a query is its own image's entry in the bank, its K negatives are entries drawn
uniformly (with replacement) from the bank, one draw per step for the whole batch, as MoCo's queue is
shared by the batch; a drawn entry that is the query's own image is left out of that query's negatives.
After the optimizer step the batch's entries move toward their queries,
``v <- normalize(0.5 v + 0.5 q)`` (momentum 0.5, as the paper's implementation). There is no key
encoder: the bank's entries were encoded by past query encoders, at the epoch the image was last seen.

The bank (N x dim) and the state of the generator that draws the negatives travel in ``state_dict``,
so a resumed run draws the same negatives; every rank holds the same bank (the queries of all ranks
are gathered before the update) and draws the same negatives (the same seeded generator).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .encoder import ContrastOutput, Encoder
from .shuffle_bn import concat_all_gather

BANK_MOMENTUM = 0.5


class FeatureBank(nn.Module):
    """N unit vectors (``features``, N x dim) and the generator that draws negatives from them."""

    def __init__(self, n: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        self.register_buffer("features", F.normalize(torch.randn(n, dim), dim=1))  # random unit vectors
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def size(self) -> int:
        return self.features.shape[0]

    def draw(self, k: int) -> torch.Tensor:
        """``k`` row numbers, uniform with replacement (drawn on the CPU: the same on every device)."""
        return torch.randint(self.size, (k,), generator=self.generator).to(self.features.device)

    @torch.no_grad()
    def update(self, index: torch.Tensor, q: torch.Tensor, momentum: float = BANK_MOMENTUM) -> None:
        """``features[index] <- normalize(momentum * features[index] + (1 - momentum) * q)``."""
        moved = momentum * self.features[index] + (1.0 - momentum) * q.to(self.features.dtype)
        self.features[index] = F.normalize(moved, dim=1)

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def bank_logits(
    q: torch.Tensor, bank: torch.Tensor, index: torch.Tensor, negatives: torch.Tensor, temperature: float
) -> torch.Tensor:
    """N x (1 + K) logits / T in fp32: column 0 ``q . bank[index]``, then ``q . bank[negatives]``; a
    negative that is the query's own row is ``-inf`` (it takes no part in the softmax)."""
    with torch.autocast(q.device.type, enabled=False):
        q = q.float()
        l_pos = (q * bank[index].float()).sum(dim=1, keepdim=True)  # N x 1
        l_neg = q @ bank[negatives].float().t()  # N x K
        l_neg = l_neg.masked_fill(negatives[None, :] == index[:, None], float("-inf"))
        return torch.cat([l_pos, l_neg], dim=1) / temperature


class MemoryBank(nn.Module):
    def __init__(
        self, encoder_q: Encoder, n_images: int, dim: int, negatives: int, temperature: float, seed: int = 0
    ) -> None:
        super().__init__()
        if negatives >= n_images:
            raise ValueError(
                f"the memory bank draws {negatives} negatives from {n_images} entries; it needs fewer"
            )
        self.encoder_q = encoder_q
        self.bank = FeatureBank(n_images, dim, seed)
        self.negatives, self.temperature = negatives, temperature

    def forward(
        self, im_q: torch.Tensor, im_k: torch.Tensor, index: torch.Tensor | None = None
    ) -> ContrastOutput:
        """The query view against the bank; the key view is not used (no key encoder)."""
        if index is None:
            raise ValueError("the memory bank needs each image's row (the loader's index)")
        q = F.normalize(self.encoder_q(im_q).float(), dim=1)  # N x dim
        logits = bank_logits(q, self.bank.features, index, self.bank.draw(self.negatives), self.temperature)
        return ContrastOutput(logits=logits, q=q.detach(), index=index)

    @torch.no_grad()
    def after_step(self, out: ContrastOutput, momentum: float) -> None:
        """Every rank moves the global batch's entries toward their queries (the same bank everywhere)."""
        self.bank.update(concat_all_gather(out.index), concat_all_gather(out.q))

    def shared_buffers(self) -> list[torch.Tensor]:
        return [self.bank.features]


__all__ = ["BANK_MOMENTUM", "FeatureBank", "bank_logits", "MemoryBank"]
