"""The shipped experiment files (``experiments/``), found by name from a checkout or an installed wheel.

A checkout reads them from its ``experiments/`` folder; a wheel carries the same files as package data
in ``service/experiments/`` (pyproject.toml maps the folder there). So ``moco config show digits.yaml``
and ``moco quickstart`` work wherever the project is installed.
"""

from __future__ import annotations

from pathlib import Path

from moco_core.config import ConfigError

PACKAGED = Path(__file__).resolve().parent / "experiments"  # in a wheel
CHECKOUT = Path(__file__).resolve().parents[1] / "experiments"  # in a checkout (or an editable install)


def recipes_dir() -> Path:
    """The folder of the shipped experiment files."""
    return PACKAGED if PACKAGED.is_dir() else CHECKOUT


def recipe_file(name: str) -> Path:
    """The shipped experiment file ``name`` (``digits.yaml``)."""
    path = recipes_dir() / name
    if not path.is_file():
        raise ConfigError(f"the shipped recipe {name} is missing from {recipes_dir()}; reinstall the project")
    return path


def find_experiment(file: str | Path) -> Path:
    """``file`` when it exists; else, for a bare name (``digits.yaml``, ``digits``) or the checkout's
    ``experiments/NAME``, the shipped recipe of that name. A ``ConfigError`` lists the shipped recipes
    when neither exists."""
    path = Path(file)
    if path.is_file():
        return path
    if path.parent in (Path("."), Path("experiments")) and path.name:
        shipped = recipes_dir() / (path.name if path.suffix else f"{path.name}.yaml")
        if shipped.is_file():
            return shipped
    names = ", ".join(sorted(p.name for p in recipes_dir().glob("*.yaml")))
    raise ConfigError(f"experiment file not found: {path} (shipped recipes, usable by name: {names})")


__all__ = ["recipes_dir", "recipe_file", "find_experiment"]
