"""The encoder package: the folder a pretrained encoder travels in.

* ``weights.pt``: the backbone's ``state_dict`` (tensors only), read back with
  ``torch.load(..., weights_only=True)``; a pulled encoder can never run code on the puller's machine;
* ``encoder.json``: everything needed to rebuild and feed the backbone (arch, stem, channels, feature
  width, image size, normalisation) plus where it came from (MoCo config, data fingerprint, run, metrics;
  ``arch_source``: the library, its version and the model's name there; ``init``: ``model.init`` as given
  and the file it resolved to). A package without the later keys (``arch_source``, ``init``) reads as
  before. A timm arch is rebuilt with the package's ``image_size`` (a ViT's input size).

A package is checked when it is written (the state dict must load into a fresh backbone of the config)
and when it is read (JSON keys, format version, strict load), so a package that could not be used is
never written and never half-loaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moco_core.archs import arch_problem, timm_name
from moco_core.augment import normalization
from moco_core.backbones import RANDOM, create_backbone
from moco_core.config import ExperimentConfig
from moco_core.errors import UserError

from ..storage import write_atomic

ENCODER_JSON = "encoder.json"
WEIGHTS = "weights.pt"
FORMAT_VERSION = 1
EXTRA_FILES = "extra_files"  # where mlflow puts ``extra_files`` inside a logged model


class EncoderError(UserError, ValueError):
    """A user-facing failure about an encoder: unknown reference, bad package; says what to do."""


def _unwrap(module: nn.Module) -> nn.Module:
    """The plain module under ``torch.compile`` (``_orig_mod``) and DDP (``module``) wrappers."""
    while True:
        if hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        elif isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def _finite_or_none(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def write_encoder_package(
    out_dir: str | Path,
    backbone: nn.Module,
    cfg: ExperimentConfig,
    *,
    fingerprint: str,
    run_id: str | None,
    metrics: dict[str, float],
) -> Path:
    """Write ``weights.pt`` and ``encoder.json`` of ``backbone`` into ``out_dir``; returns ``out_dir``.

    The state dict is checked against a fresh ``create_backbone`` of ``cfg`` first, so a package that
    could not be read back is never written.
    """
    out = Path(out_dir)
    net = _unwrap(backbone)
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    arch, channels, stem = cfg.model.arch, cfg.data.channels, cfg.model.small_image_stem
    fresh = create_backbone(arch, channels, stem, cfg.data.image_size)
    try:
        fresh.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise EncoderError(
            f"the backbone does not match model.arch={arch}, data.channels={channels}, "
            f"model.small_image_stem={stem} of config {cfg.name!r}: {e}"
        ) from None
    mean, std = normalization(channels, cfg.data.normalization)
    meta = {
        "format_version": FORMAT_VERSION,
        "name": cfg.name,
        "arch": arch,
        "small_image_stem": stem,
        "arch_source": arch_source(arch),
        "in_channels": channels,
        "feature_dim": int(fresh.feature_dim),  # type: ignore[arg-type]
        "image_size": cfg.data.image_size,
        "mean": mean,
        "std": std,
        "augment_recipe": cfg.augment.recipe,
        "moco": cfg.moco.model_dump(mode="json"),
        "model": cfg.model.model_dump(mode="json"),
        "init": init_record(cfg),
        "data_fingerprint": fingerprint,
        "source_run_id": run_id,
        "metrics": {str(k): _finite_or_none(v) for k, v in (metrics or {}).items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / WEIGHTS, lambda p: torch.save(state, p))
    text = json.dumps(meta, indent=2, allow_nan=False) + "\n"
    write_atomic(out / ENCODER_JSON, lambda p: p.write_text(text))
    return out


def arch_source(arch: str) -> dict[str, str]:
    """Where ``arch`` comes from: the library, its version and the model's name there."""
    name = timm_name(arch)
    if name is not None:
        import timm

        return {"library": "timm", "version": timm.__version__, "name": name}
    import torchvision

    return {"library": "torchvision", "version": torchvision.__version__, "name": arch}


def init_record(cfg: ExperimentConfig) -> dict[str, str | None]:
    """What pretraining started from: ``model.init`` as given, and the state_dict file it resolved to
    (``None`` for a random start)."""
    given = cfg.model.init
    if given == RANDOM:
        return {"given": given, "resolved": None}
    return {"given": given, "resolved": cfg.model.init_resolved or given}


def backbone_of_meta(meta: dict[str, Any]) -> nn.Module:
    """A fresh (random-init) backbone of the architecture a validated ``encoder.json`` describes."""
    return create_backbone(
        meta["arch"], int(meta["in_channels"]), bool(meta["small_image_stem"]), int(meta["image_size"])
    )


def _written_with(meta: dict[str, Any]) -> str:
    """A note when the package's arch library (timm) is another version than this one's."""
    src = meta.get("arch_source")
    if not isinstance(src, dict) or src.get("library") != "timm":
        return ""
    import timm

    if src.get("version") == timm.__version__:
        return ""
    return f" (the package was written with timm {src.get('version')}, this is timm {timm.__version__})"


def package_dir(path: Path) -> Path:
    """``path`` itself, or its ``extra_files/`` when ``path`` is an MLflow model folder."""
    if not (path / ENCODER_JSON).exists() and (path / EXTRA_FILES / ENCODER_JSON).is_file():
        return path / EXTRA_FILES
    return path


def read_encoder_meta(path: str | Path) -> dict:
    """The validated ``encoder.json`` of the package in folder ``path``."""
    folder = package_dir(Path(path))
    if not folder.is_dir():
        raise EncoderError(
            f"encoder package {folder} is not a folder; expected one holding {ENCODER_JSON} and {WEIGHTS}"
        )
    meta_file = folder / ENCODER_JSON
    if not meta_file.is_file():
        raise EncoderError(
            f"{meta_file} is missing: not an encoder package (expected {ENCODER_JSON} and {WEIGHTS})"
        )
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EncoderError(f"{meta_file} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise EncoderError(f"{meta_file}: expected a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise EncoderError(
            f"{meta_file}: format_version {version!r} is not supported (this code reads {FORMAT_VERSION}); "
            "pull the encoder with a matching version of this package"
        )
    required = ("arch", "in_channels", "small_image_stem", "image_size", "mean", "std")
    missing = [k for k in required if k not in meta]
    if missing:
        raise EncoderError(f"{meta_file}: missing keys {missing}")
    if not isinstance(meta["arch"], str) or (problem := arch_problem(meta["arch"])):
        shown = problem if isinstance(meta["arch"], str) else f"arch {meta['arch']!r} is not a name"
        raise EncoderError(f"{meta_file}: {shown}{_written_with(meta)}")
    if not isinstance(meta["image_size"], int) or isinstance(meta["image_size"], bool):
        raise EncoderError(f"{meta_file}: image_size must be a whole number, not {meta['image_size']!r}")
    if meta["in_channels"] not in (1, 3):
        raise EncoderError(f"{meta_file}: in_channels must be 1 or 3, not {meta['in_channels']!r}")
    ch = meta["in_channels"]
    mean, std = meta["mean"], meta["std"]
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == ch):
        raise EncoderError(f"{meta_file}: mean and std must be lists of {ch} numbers")
    return meta


def read_encoder_package(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the backbone of the package in folder ``path``; returns ``(backbone in eval mode, meta)``.

    Weights are read with ``torch.load(weights_only=True)``: a ``weights.pt`` that holds anything but
    tensors in plain containers is refused, never unpickled.
    """
    folder = package_dir(Path(path))
    meta = read_encoder_meta(folder)
    weights = folder / WEIGHTS
    meta_file = folder / ENCODER_JSON
    if not weights.is_file():
        raise EncoderError(f"{weights} is missing: the package in {folder} has {ENCODER_JSON} but no weights")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for objects, RuntimeError for a corrupt zip, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EncoderError(
            f"{weights} is not a plain tensor state_dict and was refused (loaded with weights_only=True, "
            f"objects are never unpickled): {first}"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise EncoderError(
            f"{weights}: expected a state_dict (a mapping of names to tensors), got {type(state).__name__}"
        )
    backbone = backbone_of_meta(meta)
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        if len(detail) > 600:
            detail = detail[:600] + " ..."
        raise EncoderError(
            f"{weights} does not fit the backbone described by {meta_file} (arch={meta['arch']}, "
            f"in_channels={meta['in_channels']}, small_image_stem={meta['small_image_stem']}): "
            f"{detail}{_written_with(meta)}"
        ) from None
    fd = meta.get("feature_dim")
    if fd is not None and int(fd) != int(backbone.feature_dim):  # type: ignore[arg-type]
        raise EncoderError(
            f"{meta_file}: feature_dim={fd} but arch {meta['arch']} gives {backbone.feature_dim}"
        )
    backbone.eval()
    return backbone, meta
