"""MoCo: a query encoder, a momentum key encoder and a queue of keys (He et al., 2020; Chen et al., 2020).

Reads like Algorithm 1 of the paper::

    k = encoder_k(x_k)            # no gradient, with shuffling BN
    q = encoder_q(x_q)
    logits = [q.k, q @ queue] / T
    loss = CE(logits, 0)
    # after loss.backward() (the queue is not cloned) and optimizer.step():
    enqueue(k)
    theta_k <- m * theta_k + (1 - m) * theta_q

``build_moco`` builds the model of ``moco.mechanism``: this one (``moco``), the paper's two other
ways to get negatives, :mod:`.end_to_end` and :mod:`.memory_bank`, or MoCo v3 (:mod:`.moco_v3`). All
share the query encoder, InfoNCE with the positive in column 0, and the training step's ``after_step``
/ ``shared_buffers``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from .backbones import feature_dim
from .config import ExperimentConfig
from .encoder import ContrastOutput, Encoder, build_encoder
from .end_to_end import EndToEnd
from .loss import moco_logits
from .memory_bank import MemoryBank
from .moco_v3 import MoCoV3, make_predictor
from .momentum import key_encoder, momentum_update
from .queue import KeyQueue
from .shuffle_bn import (
    batch_shuffle,
    batch_shuffle_distributed,
    batch_unshuffle,
    batch_unshuffle_distributed,
    concat_all_gather,
    convert_split_bn,
)

ShuffleMode = Literal["distributed", "split", "off"]


class MoCo(nn.Module):
    def __init__(
        self,
        encoder_q: Encoder,
        queue_size: int,
        dim: int,
        temperature: float,
        shuffle: ShuffleMode = "split",
        split_groups: int = 8,
        symmetric: bool = False,
    ) -> None:
        super().__init__()
        if shuffle == "split":  # both encoders, as the reference's single-GPU demo: the query
            # encoder's BN must not see the whole batch either (its positive's group would lie inside it)
            convert_split_bn(encoder_q, split_groups)
        self.encoder_q = encoder_q
        self.encoder_k = key_encoder(encoder_q)
        self.shuffle = shuffle
        self.symmetric = symmetric
        self.temperature = temperature
        self.queue = KeyQueue(dim, queue_size)
        self._q_params = list(self.encoder_q.parameters())
        self._k_params = list(self.encoder_k.parameters())

    @torch.no_grad()
    def momentum_update(self, m: float) -> None:
        """Move the key encoder toward the query encoder: m=1 keeps it, m=0 copies."""
        momentum_update(self._k_params, self._q_params, m)

    @torch.no_grad()
    def encode_keys(self, im_k: torch.Tensor) -> torch.Tensor:
        """Keys (N x dim, unit norm, fp32) with the batch composition changed for BN."""
        if self.shuffle == "distributed":
            x, idx = batch_shuffle_distributed(im_k)
            k = F.normalize(self.encoder_k(x).float(), dim=1)
            return batch_unshuffle_distributed(k, idx)
        if self.shuffle == "split":
            x, idx = batch_shuffle(im_k)
            k = F.normalize(self.encoder_k(x).float(), dim=1)
            return batch_unshuffle(k, idx)
        return F.normalize(self.encoder_k(im_k).float(), dim=1)

    def forward(
        self, im_q: torch.Tensor, im_k: torch.Tensor, index: torch.Tensor | None = None
    ) -> ContrastOutput:
        """Logits of each query against its key and the queue. Symmetric: each view is also the query
        of the other's key; the rows of both directions are stacked (InfoNCE over them averages the two
        losses) and both directions' keys are enqueued."""
        out = self._one_way(im_q, im_k)
        if not self.symmetric:
            return out
        back = self._one_way(im_k, im_q)
        return ContrastOutput(
            logits=torch.cat([out.logits, back.logits]), k=torch.cat([out.k, back.k])
        )  # 2N rows

    def _one_way(self, im_q: torch.Tensor, im_k: torch.Tensor) -> ContrastOutput:
        k = self.encode_keys(im_k)  # N x C, fp32
        q = F.normalize(self.encoder_q(im_q).float(), dim=1)  # N x C, fp32
        logits = moco_logits(q, k, self.queue.keys, self.temperature)  # N x (1+K)
        return ContrastOutput(logits=logits, k=k)

    @torch.no_grad()
    def after_step(self, out: ContrastOutput, momentum: float) -> None:
        """Once the optimizer has stepped: enqueue this step's keys, then move the key encoder."""
        self.enqueue(out.k)
        self.momentum_update(momentum)

    def shared_buffers(self) -> list[torch.Tensor]:
        """What every rank must hold identically: the queue and its pointer."""
        return [self.queue.keys, self.queue.ptr]

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor) -> None:
        """Enqueue this step's keys once the loss has been back-propagated.

        The logits were computed against ``queue.keys`` itself (no clone), so autograd needs it unchanged
        until ``backward`` has run. Every rank enqueues the same all-gathered keys, so the queues of all
        ranks stay identical.
        """
        self.queue.enqueue(concat_all_gather(k.float()))


ContrastModel = MoCo | EndToEnd | MemoryBank | MoCoV3


def build_moco(cfg: ExperimentConfig, world_size: int = 1, n_images: int | None = None) -> ContrastModel:
    """The model of ``moco.mechanism`` an experiment describes; ``n_images`` (the training images) sizes
    the memory bank."""
    encoder = build_encoder(cfg)
    mechanism = cfg.moco.mechanism
    if mechanism == "end_to_end":
        return EndToEnd(encoder, cfg.moco.temperature)
    if mechanism == "moco_v3":
        hidden = cfg.model.hidden_dim or feature_dim(encoder.backbone)
        return MoCoV3(encoder, make_predictor(cfg.model.dim, hidden), cfg.moco.temperature)
    if mechanism == "memory_bank":
        if n_images is None:
            raise ValueError("moco.mechanism=memory_bank needs the number of training images")
        return MemoryBank(
            encoder, n_images, cfg.model.dim, cfg.moco.queue_size, cfg.moco.temperature, cfg.run.seed
        )
    return MoCo(
        encoder,
        queue_size=cfg.moco.queue_size,
        dim=cfg.model.dim,
        temperature=cfg.moco.temperature,
        shuffle=cfg.resolved_shuffle_bn(world_size),
        split_groups=cfg.moco.split_bn_groups,
        symmetric=cfg.moco.symmetric,
    )
