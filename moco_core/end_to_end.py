"""End-to-end: the negatives are the other views of the batch, encoded with gradient (SimCLR's NT-Xent,
Chen et al. 2020; the "end-to-end" mechanism of the MoCo paper's Fig. 3).

Both views go through the query encoder in one pass. Each of the 2N views of the global batch is an
anchor: its positive is the other view of its image, its negatives the 2N - 2 other views, so the number
of negatives is tied to the batch (K = 2 x optim.batch_size - 2). Across workers the embeddings are
all-gathered *with* gradient: every rank's anchors see the whole global batch, and the gradient of a
negative flows back to the rank that encoded it. There is no key encoder, no queue and no shuffle BN.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn
from torch.nn import functional as F

from .encoder import ContrastOutput, Encoder
from .loss import positive_first


def gather_with_grad(z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' ``z`` (rank order) with gradient, and this rank's position in it."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z, 0
    return torch.cat(dist_fn.all_gather(z.contiguous()), dim=0), dist.get_rank()


def nt_xent_logits(z: torch.Tensor, everyone: torch.Tensor, rank: int, temperature: float) -> torch.Tensor:
    """NT-Xent as InfoNCE logits with the positive in column 0.

    Args:
        z: this rank's 2N embeddings, unit norm: rows ``[0, N)`` the first views, ``[N, 2N)`` the second.
        everyone: every rank's ``z`` stacked in rank order (W x 2N rows), the anchors' candidates.
        rank: this rank's position in ``everyone``.
        temperature: T.

    Returns:
        2N x (2WN - 1) logits / T: column 0 the other view of the same image, then the 2WN - 2 views of
        the other images (the anchor itself left out), in fp32.
    """
    with torch.autocast(z.device.type, enabled=False):
        z, everyone = z.float(), everyone.float()
        two_n = z.shape[0]
        n = two_n // 2
        rows = torch.arange(two_n, device=z.device)
        own = rank * two_n + rows  # each anchor's column in ``everyone``
        positive = rank * two_n + (rows + n) % two_n  # the other view of the same image
        return positive_first(z @ everyone.t(), positive, drop=own) / temperature  # 2N x (2WN - 1)


class EndToEnd(nn.Module):
    """Query encoder only; ``forward`` returns the NT-Xent logits of both views of the batch."""

    def __init__(self, encoder_q: Encoder, temperature: float) -> None:
        super().__init__()
        self.encoder_q = encoder_q
        self.temperature = temperature

    def forward(
        self, im_q: torch.Tensor, im_k: torch.Tensor, index: torch.Tensor | None = None
    ) -> ContrastOutput:
        z = F.normalize(self.encoder_q(torch.cat([im_q, im_k])).float(), dim=1)  # 2N x dim
        everyone, rank = gather_with_grad(z)
        return ContrastOutput(logits=nt_xent_logits(z, everyone, rank, self.temperature))

    def after_step(self, out: ContrastOutput, momentum: float) -> None:
        """Nothing is kept between steps."""

    def shared_buffers(self) -> list[torch.Tensor]:
        return []


__all__ = ["gather_with_grad", "nt_xent_logits", "EndToEnd"]
