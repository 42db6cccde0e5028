"""Options that several commands share, each defined once and meaning one thing in every command.

``--set`` overrides a config field; ``--resume`` continues a run (or sweep); ``--workers`` / ``--gpu`` set
``scaling.*``; ``--ray-address`` is the Ray cluster a command drives from this process (``ray.init``);
``--address`` is a cluster's dashboard, which ``moco submit`` and ``moco jobs`` talk to over HTTP.
"""

from __future__ import annotations

import argparse
from typing import Any

from moco_core.config import load_config


def add_config(
    p: argparse.ArgumentParser,
    what: str = "experiment YAML file (see experiments/)",
    example: str = "moco.temperature=0.2",
) -> None:
    """FILE and ``--set KEY=VALUE`` (repeatable, validated like the file)."""
    p.add_argument("file", metavar="FILE", help=what)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config field, e.g. --set {example} (repeatable; validated like the file)",
    )


def add_scaling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers (sets scaling.workers)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (sets scaling.use_gpu)")


def add_resume(p: argparse.ArgumentParser, metavar: str, help: str) -> None:
    """``--resume`` (the latest unfinished one of the experiment) or ``--resume NAME``."""
    p.add_argument("--resume", nargs="?", const="", default=None, metavar=metavar, help=help)


def add_splits(p: argparse.ArgumentParser) -> None:
    """``--splits-dir`` and ``--label-columns``: where a dataset's CSVs are and which columns label it."""
    p.add_argument("--splits-dir", default=None, metavar="DIR", help="folder of train.csv/val.csv/test.csv")
    p.add_argument(
        "--label-columns", default=None, metavar="A,B", help="label columns (default: all but Path)"
    )


def label_columns_of(args: argparse.Namespace) -> list[str] | None:
    if args.label_columns is None:
        return None
    return [c.strip() for c in args.label_columns.split(",") if c.strip()]


def add_ray_address(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ray-address",
        dest="ray_address",
        default=None,
        metavar="ADDR",
        help="the Ray cluster to run on, as ray.init takes it (HEAD:6379, or auto); "
        "default: RAY_ADDRESS, else a new local cluster",
    )


def add_dashboard_address(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        default=None,
        metavar="URL",
        help="the head's dashboard, http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS, else RAY_ADDRESS); "
        "a Ray auth token is read from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token "
        "when the cluster asks for one",
    )


def scaling_overrides(args: argparse.Namespace) -> list[str]:
    """``--workers`` / ``--gpu`` as ``--set`` items."""
    extra = []
    if args.workers is not None:
        extra.append(f"scaling.workers={args.workers}")
    if args.gpu:
        extra.append("scaling.use_gpu=true")
    return extra


def load(args: argparse.Namespace, extra: list[str] | None = None) -> Any:
    """The validated config of FILE with ``--set`` (and ``extra``) applied."""
    return load_config(args.file, [*args.overrides, *(extra or [])])


def resume_of(args: argparse.Namespace) -> bool | str:
    """``False`` (no ``--resume``), ``True`` (the latest unfinished one) or the name given."""
    if args.resume is None:
        return False
    return args.resume or True


__all__ = [
    "add_config",
    "add_scaling",
    "add_resume",
    "add_ray_address",
    "add_dashboard_address",
    "scaling_overrides",
    "load",
    "resume_of",
]
