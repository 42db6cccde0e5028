"""The lines that end a run's summary: what was registered, and how to browse it and pull the encoder."""

from __future__ import annotations

from typing import Any

MLFLOW_UI = "http://127.0.0.1:5000"


def registered_line(reg: dict[str, Any] | None, width: int = 20) -> list[str]:
    """``registered  models:/NAME/VERSION (now champion)``, or nothing when nothing was registered."""
    if not reg:
        return []
    champ = {True: " (now champion)", False: " (champion unchanged)"}.get(reg.get("champion"), "")
    return [f"  {'registered':<{width}} {reg['model_uri']}{champ}"]


def browse_and_pull(tracking_uri: str, ref: str | None, env: str = "") -> list[str]:
    """``browse: mlflow ui ...`` for a local store, and ``pull: moco encoders pull REF ...`` when an encoder
    was published; ``env`` (e.g. ``MLFLOW_TRACKING_URI=...``) prefixes the pull command."""
    lines = []
    if tracking_uri.startswith("sqlite:///"):
        lines.append(f"browse: mlflow ui --backend-store-uri {tracking_uri}   (then open {MLFLOW_UI})")
    if ref:
        lines.append(f"pull:   {env + ' ' if env else ''}moco encoders pull {ref} --out encoder/")
    return lines


__all__ = ["registered_line", "browse_and_pull"]
