"""Backbones: torchvision ResNets, or any timm model (``timm:<name>``), without their classifier; the
small-image stem; and the weights pretraining starts from (``model.init``).

The standard ResNet stem (7x7 stride-2 conv + max-pool) shrinks a 32x32 image to 8x8 before the first
block; on small images that throws away most of the signal, and MoCo on it was seen to end below a
random-init encoder. The small-image stem (3x3 stride-1 conv, no max-pool) is the CIFAR variant used
by the MoCo CIFAR demo and by SimCLR's CIFAR experiments. timm's ResNets and DenseNets get the same
stem (their first conv at stride 1, their stem max-pool removed); other timm models are built as timm
defines them, whatever ``small_image_stem`` says.

Every backbone maps ``(N, C, H, W)`` to ``(N, feature_dim)`` and carries ``.feature_dim``. Weights are
never downloaded: a timm model is built with ``pretrained=False``; a pretrained start is a state_dict
file given as ``model.init`` (:func:`initial_backbone`).
"""

from __future__ import annotations

import io
import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models

from .archs import TIMM_PREFIX, arch_problem, timm_name
from .config import ConfigError, ExperimentConfig

log = logging.getLogger(__name__)

ARCHS: dict[str, Callable[..., models.ResNet]] = {
    "resnet18": models.resnet18,
    "resnet34": models.resnet34,
    "resnet50": models.resnet50,
}
RANDOM = "random"  # model.init of a random start
SHOWN_KEYS = 8  # keys named per kind in a mismatch error


def create_backbone(
    arch: str, in_channels: int = 3, small_image_stem: bool = False, image_size: int | None = None
) -> nn.Module:
    """A backbone that maps ``(N, in_channels, H, W)`` images to ``(N, feature_dim)`` features.

    ``arch``: a torchvision ResNet name or ``timm:<name>``. ``image_size`` reaches the timm models that
    take one (``img_size``: ViTs, Swin, ...); the others ignore it. Weights are randomly initialised
    (never downloaded). ``backbone.feature_dim`` holds the width.
    """
    if (problem := arch_problem(arch)) is not None:
        raise ValueError(problem)
    name = timm_name(arch)
    if name is not None:
        return _timm_backbone(name, in_channels, small_image_stem, image_size)
    net = ARCHS[arch](weights=None)
    if small_image_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    net.feature_dim = feature_dim  # type: ignore[assignment]
    return net


def _timm_backbone(name: str, in_channels: int, small_image_stem: bool, image_size: int | None) -> nn.Module:
    import timm

    kw: dict[str, Any] = {"pretrained": False, "num_classes": 0, "in_chans": in_channels}
    try:
        net = timm.create_model(name, **kw, **({"img_size": image_size} if image_size else {}))
    except TypeError as e:  # a model without an input size of its own (a CNN)
        if image_size is None or "img_size" not in str(e):
            raise
        net = timm.create_model(name, **kw)
    if small_image_stem:
        _small_timm_stem(net)
    # the width of forward()'s output: past a head's hidden layer (MobileNetV3's conv_head), if any
    net.feature_dim = int(getattr(net, "head_hidden_size", None) or net.num_features)
    return net


def _small_timm_stem(net: nn.Module) -> bool:
    """timm's ResNets (every stem type) and DenseNets: first conv 3x3 at stride 1, no stem max-pool.
    Returns whether ``net`` is one of them (other models are left as they are)."""
    from timm.models.densenet import DenseNet
    from timm.models.resnet import ResNet

    if isinstance(net, ResNet):
        first, pool = ("conv1" if isinstance(net.conv1, nn.Conv2d) else "conv1.0"), "maxpool"
    elif isinstance(net, DenseNet):
        first, pool = "features.conv0", "features.pool0"
    else:
        return False
    old = net.get_submodule(first)
    new = nn.Conv2d(old.in_channels, old.out_channels, 3, stride=1, padding=1, bias=old.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    _replace(net, first, new.to(device=old.weight.device))
    _replace(net, pool, nn.Identity())
    return True


def _replace(net: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, attr, module)


def backbone_for(cfg: ExperimentConfig) -> nn.Module:
    """The randomly initialised backbone an experiment describes (a random-init baseline's too)."""
    return create_backbone(cfg.model.arch, cfg.data.channels, cfg.model.small_image_stem, cfg.data.image_size)


def initial_backbone(cfg: ExperimentConfig) -> nn.Module:
    """The backbone pretraining starts from: :func:`backbone_for`, with the weights of ``model.init``
    loaded unless it is ``random`` (see :func:`load_init`)."""
    backbone = backbone_for(cfg)
    source = init_file(cfg)
    if source is not None:
        load_init(backbone, source, cfg)
    return backbone


def init_file(cfg: ExperimentConfig) -> str | None:
    """The state_dict file ``model.init`` loads (what the service resolved it to, if it did), or
    ``None`` for a random start."""
    if cfg.model.init == RANDOM:
        return None
    if cfg.model.init_resolved:
        return cfg.model.init_resolved
    if cfg.model.init.startswith(("models:/", "runs:/")):
        raise ConfigError(
            f"model.init: {cfg.model.init} is an encoder reference, which needs MLflow: moco pretrain "
            "resolves it to a state_dict file before training (service.registry.init.resolve_init); "
            "here, give the file (a package's weights.pt)"
        )
    return cfg.model.init


def feature_dim(backbone: nn.Module) -> int:
    return int(backbone.feature_dim)  # type: ignore[arg-type]


@torch.no_grad()
def probe_output_dim(backbone: nn.Module, in_channels: int, image_size: int) -> int:
    """Run one image through ``backbone`` (eval mode) and return its feature width."""
    was_training = backbone.training
    backbone.eval()
    out = backbone(torch.zeros(1, in_channels, image_size, image_size))
    backbone.train(was_training)
    return int(out.shape[1])


# --------------------------------------------------------------------------------------------
# does the arch fit the images


def patch_projection(backbone: nn.Module) -> nn.Module:
    """A ViT's patch embedding (timm's ``patch_embed.proj``); ValueError for a model without one."""
    proj = getattr(getattr(backbone, "patch_embed", None), "proj", None)
    if not isinstance(proj, nn.Module):
        raise ValueError(
            "model.freeze_patch_embed needs a model with a patch embedding (a timm ViT: patch_embed.proj)"
        )
    return proj


def check_arch_fits(cfg: ExperimentConfig) -> None:
    """``model.arch`` builds for ``data.image_size`` and ``data.channels`` and maps one such image to
    its ``feature_dim`` features; a ViT's patches tile the image exactly (``image_size`` a multiple of
    the patch size). Raises :class:`~moco_core.config.ConfigError` naming the keys. Cheap: the model is
    built and run on the meta device (no weights allocated), on the CPU only where that fails."""
    arch, size, channels = cfg.model.arch, cfg.data.image_size, cfg.data.channels
    what = f"model.arch={arch} with data.image_size={size}, data.channels={channels}"
    try:
        with torch.device("meta"):
            net = backbone_for(cfg)
    except Exception as e:  # noqa: BLE001 - whatever the model's constructor says
        raise ConfigError(f"{what}: the model cannot be built: {_first_line(e)}") from None
    if cfg.model.freeze_patch_embed:
        try:
            patch_projection(net)
        except ValueError as e:
            raise ConfigError(f"model.arch={arch}: {e}") from None
    for name, module in net.named_modules():
        patch = _patch_size(module)
        if patch is not None and (size % patch[0] or size % patch[1]):
            p = max(patch)
            fits = sorted({s for s in (size - size % p, size - size % p + p) if s >= p})
            raise ConfigError(
                f"{what}: the image does not split into whole patches of {patch[0]}x{patch[1]} "
                f"({name or 'the model'}); use a data.image_size that is a multiple of {p} "
                f"(e.g. {' or '.join(map(str, fits))})"
            )
    try:
        out = _probe(net.eval(), channels, size, "meta")
    except Exception:  # noqa: BLE001 - an op without a meta kernel: run it for real
        try:
            out = _probe(backbone_for(cfg).eval(), channels, size, "cpu")
        except Exception as e:  # noqa: BLE001
            raise ConfigError(
                f"{what}: one image does not go through the model: {_first_line(e)}; "
                "a larger data.image_size (or another model.arch) may fit"
            ) from None
    if tuple(out.shape) != (1, feature_dim(net)):
        raise ConfigError(
            f"{what}: the model gives features of shape {tuple(out.shape[1:])} per image, not "
            f"({feature_dim(net)},): it is not usable as a backbone here"
        )


def _probe(net: nn.Module, channels: int, size: int, device: str) -> torch.Tensor:
    with torch.no_grad():
        return net(torch.zeros(1, channels, size, size, device=device))


def _patch_size(module: nn.Module) -> tuple[int, int] | None:
    """The patch size of a timm ``PatchEmbed`` (ViT, Swin, DeiT, ...); ``None`` for other modules."""
    try:
        from timm.layers import PatchEmbed
    except ImportError:  # pragma: no cover - timm is a dependency
        return None
    if not isinstance(module, PatchEmbed):
        return None
    p = module.patch_size
    return (int(p), int(p)) if isinstance(p, int) else (int(p[0]), int(p[1]))


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


# --------------------------------------------------------------------------------------------
# a pretrained start


def classifier_prefixes(backbone: nn.Module) -> tuple[str, ...]:
    """The module names of the classifier the backbone was built without (``fc`` of a ResNet, timm's
    ``pretrained_cfg['classifier']``: ``classifier``, ``head``, ``head.fc``, ...): a full ImageNet
    state_dict's keys under them have nowhere to go and are dropped."""
    cfg = getattr(backbone, "pretrained_cfg", None)
    if not isinstance(cfg, dict):  # a torchvision ResNet
        return ("fc",)
    names = cfg.get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def read_state_dict(path: str, key: str = "model.init") -> dict[str, torch.Tensor]:
    """The state_dict in file ``path`` (a local path or a ``file://`` / ``s3://`` / ``gs://`` URI), read
    on the CPU with ``weights_only=True``: a file of pickled objects is refused, never run. Errors name
    ``key`` and the file."""
    try:
        if "://" in path:
            import pyarrow.fs

            fs, inner = pyarrow.fs.FileSystem.from_uri(path)
            with fs.open_input_stream(inner) as f:
                data: Any = io.BytesIO(f.read())
        else:
            p = Path(path).expanduser()
            if p.is_dir():
                raise ConfigError(
                    f"{key}: {path} is a folder; give a state_dict file (torch.save(backbone.state_dict(), "
                    "FILE)), or an encoder package folder to `moco pretrain`, which resolves it"
                )
            if not p.is_file():
                raise ConfigError(f"{key}: {path} does not exist (expected a state_dict file)")
            data = p
        state = torch.load(data, map_location="cpu", weights_only=True)
    except ConfigError:
        raise
    except pickle.UnpicklingError as e:
        raise ConfigError(
            f"{key}: {path} holds pickled objects, not only tensors (a whole model saved with "
            "torch.save(model)?), and was refused: it is read with weights_only=True, so it can never run "
            "code. Save the backbone's weights instead: torch.save(backbone.state_dict(), FILE) "
            f"({_first_line(e)})"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise ConfigError(f"{key}: {path} cannot be read as a torch file: {_first_line(e)}") from None
    if not isinstance(state, dict) or not state:
        raise ConfigError(
            f"{key}: {path} holds a {type(state).__name__}, not a state_dict (a mapping of names to tensors)"
        )
    bad = [str(k) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise ConfigError(
            f"{key}: {path} is not a state_dict of tensors: {len(bad)} entries are not tensors "
            f"({', '.join(bad[:SHOWN_KEYS])}); a training checkpoint holds the backbone's state_dict "
            "inside it: save that one alone"
        )
    return state


def load_init(backbone: nn.Module, path: str, cfg: ExperimentConfig, key: str = "model.init") -> None:
    """Load the state_dict file ``path`` into ``backbone`` (of ``cfg``), keys matched strictly: only the
    classifier's keys of a full state_dict (:func:`classifier_prefixes`) may be left over. A missing,
    unexpected or wrongly shaped key is a :class:`~moco_core.config.ConfigError` that lists them."""
    state = read_state_dict(path, key)
    own = backbone.state_dict()
    heads = classifier_prefixes(backbone)
    dropped = [k for k in state if k not in own and any(k == h or k.startswith(h + ".") for h in heads)]
    state = {k: v for k, v in state.items() if k not in dropped}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shaped:
        m = cfg.model
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (in the backbone, not in the file): {_names(missing)}")
        if unexpected:
            parts.append(
                f"{len(unexpected)} unexpected (in the file, not in the backbone): {_names(unexpected)}"
            )
        if shaped:
            shown = ", ".join(
                f"{k} (file {list(state[k].shape)}, backbone {list(own[k].shape)})"
                for k in shaped[:SHOWN_KEYS]
            )
            more = f", ... {len(shaped) - SHOWN_KEYS} more" if len(shaped) > SHOWN_KEYS else ""
            parts.append(f"{len(shaped)} wrongly shaped: {shown}{more}")
        raise ConfigError(
            f"{key}: {path} does not fit model.arch={m.arch} (data.channels={cfg.data.channels}, "
            f"model.small_image_stem={m.small_image_stem}): keys " + "; ".join(parts) + ". Are these the "
            "weights of another arch, or of another number of channels or stem?"
        )
    backbone.load_state_dict(state, strict=True)
    if dropped:
        log.info("%s: %s: dropped the classifier's %d keys (%s)", key, path, len(dropped), _names(dropped))


def _names(keys: list[str]) -> str:
    more = f", ... {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


__all__ = [
    "ARCHS",
    "RANDOM",
    "TIMM_PREFIX",
    "create_backbone",
    "backbone_for",
    "initial_backbone",
    "init_file",
    "feature_dim",
    "patch_projection",
    "probe_output_dim",
    "check_arch_fits",
    "classifier_prefixes",
    "read_state_dict",
    "load_init",
]
