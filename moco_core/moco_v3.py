"""MoCo v3 (Chen, Xie, He 2021): keys from the momentum encoder in the batch itself, no queue.

As the reference's ``builder.py``::

    q1, q2 = predictor(encoder_q(x1)), predictor(encoder_q(x2))
    k1, k2 = encoder_k(x1), encoder_k(x2)           # no gradient; all-gathered across workers
    loss = 2T * (InfoNCE(q1, k2) + InfoNCE(q2, k1))  # each query against every key of the global batch

The query's positive is the key of its own image (the other view); its negatives the keys of the other
W x N - 1 images of the global batch, so K is tied to the batch. The projection head (``model.head:
mlp_bn``: 3 layers with BN, the last BN without affine parameters) is part of both encoders; the
prediction head (2 layers, no last BN) only of the query side. The key encoder follows the query encoder
by momentum after each step (``moco.momentum_schedule: cosine`` takes m to 1 as in the paper).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from .encoder import ContrastOutput, Encoder, make_mlp
from .loss import positive_first
from .momentum import key_encoder, momentum_update
from .shuffle_bn import concat_all_gather


def batch_key_logits(q: torch.Tensor, keys: torch.Tensor, rank: int, temperature: float) -> torch.Tensor:
    """InfoNCE logits of each query against every key of the global batch, the positive in column 0.

    Args:
        q: this rank's N queries, unit norm.
        keys: every rank's N keys stacked in rank order (W x N rows), unit norm, no gradient.
        rank: this rank's position in ``keys``; query i's positive is ``keys[rank * N + i]``.
        temperature: T.

    Returns:
        N x (W x N) logits / T in fp32: column 0 the positive, then the W x N - 1 other keys in order.
    """
    with torch.autocast(q.device.type, enabled=False):
        q, keys = q.float(), keys.float()
        positive = rank * q.shape[0] + torch.arange(q.shape[0], device=q.device)
        return positive_first(q @ keys.t(), positive) / temperature  # N x WN


class MoCoV3(nn.Module):
    """Query encoder and predictor (trained), momentum key encoder; no queue, no shuffle BN."""

    def __init__(self, encoder_q: Encoder, predictor: nn.Module, temperature: float) -> None:
        super().__init__()
        self.encoder_q = encoder_q
        self.predictor = predictor
        self.encoder_k = key_encoder(encoder_q)
        self.temperature = temperature
        self._q_params = list(self.encoder_q.parameters())
        self._k_params = list(self.encoder_k.parameters())

    def forward(
        self, im_q: torch.Tensor, im_k: torch.Tensor, index: torch.Tensor | None = None
    ) -> ContrastOutput:
        """Both directions' logits stacked (2N rows: q1 against the keys of view 2, then q2 against
        view 1's); InfoNCE over them is the mean of the two losses, so the reference's
        ``2T x (L1 + L2)`` is that mean scaled by 4T (``loss_scale``)."""
        q1 = F.normalize(self.predictor(self.encoder_q(im_q)).float(), dim=1)  # each view its own
        q2 = F.normalize(self.predictor(self.encoder_q(im_k)).float(), dim=1)  # BN batch, as the reference
        with torch.no_grad():
            k1 = concat_all_gather(F.normalize(self.encoder_k(im_q).float(), dim=1))
            k2 = concat_all_gather(F.normalize(self.encoder_k(im_k).float(), dim=1))
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        t = self.temperature
        logits = torch.cat([batch_key_logits(q1, k2, rank, t), batch_key_logits(q2, k1, rank, t)])
        return ContrastOutput(logits=logits, loss_scale=4.0 * t)

    @torch.no_grad()
    def after_step(self, out: ContrastOutput, momentum: float) -> None:
        """Once the optimizer has stepped: move the key encoder toward the query encoder."""
        momentum_update(self._k_params, self._q_params, momentum)

    def shared_buffers(self) -> list[torch.Tensor]:
        return []


def make_predictor(dim: int, hidden_dim: int) -> nn.Module:
    """MoCo v3's prediction head: ``dim -> hidden -> dim``, BN and ReLU between, no BN at the end."""
    return make_mlp(2, dim, hidden_dim, dim, last_bn=False)


__all__ = ["batch_key_logits", "MoCoV3", "make_predictor"]
