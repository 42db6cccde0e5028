"""The names ``model.arch`` takes: the torchvision ResNets, and ``timm:<name>`` for any timm model.

Kept apart from :mod:`moco_core.backbones` (which builds them) so that the config validates a name
without importing torch; timm itself is imported only for a ``timm:`` name.
"""

from __future__ import annotations

import difflib

RESNETS = ("resnet18", "resnet34", "resnet50")
TIMM_PREFIX = "timm:"


def timm_name(arch: str) -> str | None:
    """The timm model name of ``timm:<name>``; ``None`` for a torchvision ResNet."""
    return arch[len(TIMM_PREFIX) :] if arch.startswith(TIMM_PREFIX) else None


def arch_problem(arch: str) -> str | None:
    """What is wrong with ``arch`` as a ``model.arch``, or ``None``. An unknown timm name is answered
    with the closest names timm knows."""
    if arch in RESNETS:
        return None
    name = timm_name(arch)
    if name is None:
        close = difflib.get_close_matches(arch, RESNETS, n=3, cutoff=0.6)
        if _is_timm_model(arch):
            close = [TIMM_PREFIX + arch]
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return (
            f"unknown arch {arch!r}: use one of {', '.join(RESNETS)} (torchvision), or timm:<name> for any "
            f"timm model (e.g. timm:densenet121, timm:vit_small_patch16_224){hint}"
        )
    if not name:
        return "timm: needs a model name, e.g. timm:densenet121 (timm.list_models() lists them)"
    import timm

    if timm.is_model(name):  # a pretrained tag (name.tag) is allowed: only the name matters here
        return None
    known = timm.list_models()
    close = difflib.get_close_matches(name.split(".", 1)[0], known, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(TIMM_PREFIX + c for c in close)}" if close else ""
    return f"unknown timm model {name!r} (timm {timm.__version__} knows {len(known)} models){hint}"


def _is_timm_model(name: str) -> bool:
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    return bool(name) and timm.is_model(name)


__all__ = ["RESNETS", "TIMM_PREFIX", "timm_name", "arch_problem"]
