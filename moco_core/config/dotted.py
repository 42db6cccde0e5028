"""Dotted keys (``moco.temperature``) over nested config dicts: flatten, set values by key, merge."""

from __future__ import annotations

from typing import Any

from .base import ConfigError


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys. Lists and None stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_in(node: dict[str, Any], parts: list[str], value: Any, what: str) -> None:
    """Set ``node[parts[0]][parts[1]]... = value`` in place, creating sections; ``what`` names the
    setting in the error when a part of the path is a value, not a section."""
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"{what}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def set_values(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``raw`` with ``{"moco.temperature": 0.2, ...}`` set (values as they are, not parsed)."""
    out = deepcopy(raw)
    for key, value in values.items():
        set_in(out, key.split("."), value, key)
    return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base`` (a new dict): mappings merge key by key, any other value of ``over``
    (a list, ``None``) replaces the base's."""
    out = deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else deepcopy(v)
    return out


def deepcopy(d: Any) -> Any:
    """A copy of nested dicts and lists (their leaves are shared: config values are immutable)."""
    if isinstance(d, dict):
        return {k: deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [deepcopy(v) for v in d]
    return d
