"""``moco quickstart`` and ``moco pretrain``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .codes import EXIT_OK
from .options import (
    add_config,
    add_ray_address,
    add_resume,
    add_scaling,
    add_tracking_uri,
    load,
    resume_of,
    scaling_overrides,
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="the main job: digits dataset -> pretrain -> evaluate -> register",
        description="Write scikit-learn's digits, pretrain MoCo v2 on a local Ray cluster, compare "
        "its kNN accuracy with a random-init encoder, and register the encoder in MLflow.",
    )
    p.add_argument(
        "--workdir",
        default=".",
        help="where data/, runs/ and mlflow.db go (default: here); --tracking-uri puts the MLflow store "
        "elsewhere",
    )
    p.add_argument("--epochs", type=int, default=None, help="override optim.epochs of the digits.yaml recipe")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers (default: from digits.yaml)")
    add_tracking_uri(p)
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser(
        "pretrain",
        help="pretrain an encoder with Ray Train (local cluster by default)",
        description="Pretrain with MoCo through Ray Train. Runs on a local Ray cluster unless "
        "--ray-address or RAY_ADDRESS names one. Logs to MLflow and registers the encoder.",
    )
    add_config(p)
    add_scaling(p)
    add_resume(
        p,
        "RUN",
        "continue the latest unfinished run of this experiment, or the named RUN, "
        "from its last checkpoint and in the same MLflow run",
    )
    add_ray_address(p)
    add_tracking_uri(p)
    p.set_defaults(func=cmd_pretrain)


def cmd_quickstart(args: argparse.Namespace) -> int:
    from ..quickstart import quickstart

    return quickstart(workdir=Path(args.workdir), epochs=args.epochs, workers=args.workers)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from ..pretrain import pretrain

    extra = scaling_overrides(args)
    cfg = load(args, extra)
    overrides = [*args.overrides, *extra]
    print_result(pretrain(cfg, resume=resume_of(args), address=args.ray_address, overrides=overrides))
    return EXIT_OK


def print_result(result: Any) -> None:
    """The end of ``moco pretrain``: the final metrics, where everything is, what to do next."""
    from ..next_steps import browse_and_pull, registered_line

    print(f"\nrun {result.run_name} finished")
    for k, v in sorted(result.metrics.items()):
        if k.startswith(("train/loss", "eval/")):
            print(f"  {k:<20} {v:.4f}")
    print(f"  checkpoint           {result.checkpoint_path}")
    if result.published_epoch is not None:
        why = "the monitor's best" if result.published_as == "best" else "the last"
        where = result.published_checkpoint_path
        print(f"  published encoder    epoch {result.published_epoch} ({why}): {where}")
    print(f"  MLflow run           {result.mlflow_run_id}  ({result.tracking_uri})")
    reg = result.registered
    lines = registered_line(reg)
    lines += ["", *browse_and_pull(result.tracking_uri, f"models:/{reg['name']}@champion" if reg else None)]
    print("\n".join(lines))
