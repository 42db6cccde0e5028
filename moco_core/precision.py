"""The numeric precision of a training step: which autocast dtype, and the gradient scaler fp16 needs.

``run.precision: auto`` is bf16 autocast on GPUs that run bf16 natively (Ampere and later), fp16 with a
gradient scaler on older ones (V100, T4: they only emulate bf16), and fp32 on the CPU. The logits and
split-BN statistics are computed in fp32 in every case (:mod:`moco_core.loss`, :mod:`moco_core.shuffle_bn`).
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

Precision = Literal["fp32", "bf16", "fp16"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """``auto`` made concrete for ``device``; anything else as given."""
    if precision != "auto":
        return precision  # type: ignore[return-value]
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to bf16 or fp16 (``precision`` resolved for ``device``), or nothing for fp32."""
    resolved = resolve_precision(precision, device)
    if resolved == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[resolved])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (its small range underflows small gradients), else ``None``."""
    if resolve_precision(precision, device) != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


__all__ = ["Precision", "resolve_precision", "autocast", "grad_scaler"]
