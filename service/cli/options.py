"""Options that several commands share, each defined once and meaning one thing in every command.

``--set`` overrides a config field; ``--resume`` continues a run (or sweep); ``--workers`` / ``--gpu`` set
``scaling.*``; ``--ray-address`` is the Ray cluster a command drives from this process (``ray.init``);
``--address`` is a cluster's dashboard, which ``moco submit`` and ``moco jobs`` talk to over HTTP;
``--tracking-uri`` is the MLflow store of every command that talks to MLflow (:func:`tracking_uri_env`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from typing import Any

from moco_core.config import load_config, tracking_uri_problem

from ..recipes import find_experiment


def add_config(
    p: argparse.ArgumentParser,
    what: str = "experiment YAML file, or the name of a shipped recipe (digits.yaml; see experiments/)",
    example: str = "moco.temperature=0.2",
    required: bool = True,
) -> None:
    """FILE and ``--set KEY=VALUE`` (repeatable, validated like the file)."""
    p.add_argument("file", metavar="FILE", help=what, **({} if required else {"nargs": "?"}))
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


def add_tracking_uri(p: argparse.ArgumentParser) -> None:
    """``--tracking-uri URI``: the MLflow store the command uses; :func:`service.cli.main` applies it."""
    p.add_argument(
        "--tracking-uri",
        dest="tracking_uri",
        default=None,
        metavar="URI",
        help="MLflow tracking URI: sqlite:///PATH, a database URL, or http://HOST:5000 (beats "
        "MLFLOW_TRACKING_URI and tracking.uri; default: those, else sqlite:///mlflow.db in the working "
        "directory)",
    )


@contextlib.contextmanager
def tracking_uri_env(args: argparse.Namespace) -> Iterator[None]:
    """With ``--tracking-uri``: ``MLFLOW_TRACKING_URI`` set to it for the command (a local store made
    absolute, as Ray workers run elsewhere), so every resolution of the URI, here and in the processes
    the command starts, finds it; the environment is restored afterwards."""
    uri = getattr(args, "tracking_uri", None)
    if not uri:
        yield
        return
    from ..tracking import TrackingError, resolve_tracking_uri  # loads MLflow: only for such a command

    if problem := tracking_uri_problem(uri):
        raise TrackingError(f"--tracking-uri {problem}")
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        os.environ["MLFLOW_TRACKING_URI"] = resolve_tracking_uri(None)
        yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def scaling_overrides(args: argparse.Namespace) -> list[str]:
    """``--workers`` / ``--gpu`` as ``--set`` items."""
    extra = []
    if args.workers is not None:
        extra.append(f"scaling.workers={args.workers}")
    if args.gpu:
        extra.append("scaling.use_gpu=true")
    return extra


def load(args: argparse.Namespace, extra: list[str] | None = None) -> Any:
    """The validated config of FILE (a path, or a shipped recipe's name) with ``--set`` (and ``extra``)
    applied."""
    return load_config(find_experiment(args.file), [*args.overrides, *(extra or [])])


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
    "add_tracking_uri",
    "tracking_uri_env",
    "scaling_overrides",
    "load",
    "resume_of",
]
