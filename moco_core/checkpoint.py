"""Training checkpoints: what one holds, how it is written and read back, and the encoder inside it.

A checkpoint is one file, ``state.pt``, in a folder (the one Ray Train persists): the
:meth:`TrainState.state_dict <moco_core.engine.TrainState.state_dict>` of the run (both encoders and
heads, the queue and its pointer, optimizer, LR scheduler, epoch and step, RNG states). It holds tensors
and plain values only, so it is read with ``weights_only=True``, and it is always read onto the CPU:
``load_state_dict`` then places each tensor where the live object keeps it (an RNG state must stay a
CPU tensor, so mapping a checkpoint straight to a GPU breaks resume there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backbones import backbone_for
from .config import ExperimentConfig
from .engine import TrainState

CHECKPOINT_FILE = "state.pt"
BACKBONE_PREFIX = "encoder_q.backbone."  # the query encoder's backbone: what gets exported


def save_checkpoint(state: TrainState, folder: str | Path) -> Path:
    """Write ``state`` to ``folder/state.pt`` (the folder is created); returns the file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT_FILE
    torch.save(state.state_dict(), path)
    return path


def load_checkpoint(folder: str | Path) -> dict[str, Any]:
    """The state dict in ``folder/state.pt``, on the CPU, read with ``weights_only=True``."""
    return torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def restore(state: TrainState, folder: str | Path) -> None:
    """Continue ``state`` from the checkpoint in ``folder``, wherever ``state`` lives (CPU or GPU): the
    file is read onto the CPU and ``load_state_dict`` places every tensor."""
    state.load_state_dict(load_checkpoint(folder))


def backbone_from_checkpoint(cfg: ExperimentConfig, state_dict: dict[str, Any]) -> nn.Module:
    """The query encoder's backbone of a training checkpoint, as a plain backbone (batch norm, whatever
    the training used) in eval mode."""
    backbone = backbone_for(cfg)
    n = len(BACKBONE_PREFIX)
    backbone.load_state_dict(
        {k[n:]: v for k, v in state_dict["model"].items() if k.startswith(BACKBONE_PREFIX)}
    )
    return backbone.eval()


__all__ = ["CHECKPOINT_FILE", "save_checkpoint", "load_checkpoint", "restore", "backbone_from_checkpoint"]
