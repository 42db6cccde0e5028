"""``moco tune``: a Ray Tune sweep of the experiment's ``tune:`` section."""

from __future__ import annotations

import argparse

from ..ray_cluster import before_ray_import
from .codes import EXIT_OK
from .options import add_config, add_ray_address, add_resume, add_tracking_uri, load, resume_of


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="Ray Tune sweep over moco.temperature, moco.queue_size, moco.momentum (and optim.lr)",
        description="Sweep the experiment's tune: section with Ray Tune: one Ray Train run per trial, "
        "ASHA early "
        "stopping on the per-epoch metric, a parent MLflow run with one child run per trial; the best "
        "trial's encoder is registered. Runs on a local Ray cluster unless --ray-address or "
        "RAY_ADDRESS names one.",
    )
    add_config(
        p,
        "experiment YAML file with a tune: section (see experiments/)",
        example="tune.space.moco.temperature=[0.1,0.2]",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        metavar="N",
        help="sets tune.num_samples. With tune.search: grid, N repeats the whole grid (--samples 4 on the "
        "12-point grid of digits_tune.yaml starts 48 trials); with random, N is the number of trials. "
        "The number of trials is printed before the sweep starts",
    )
    add_resume(
        p,
        "SWEEP",
        "continue the latest unfinished sweep of this experiment, or the named SWEEP, without "
        "rerunning finished trials (the sweep's saved config is used)",
    )
    add_ray_address(p)
    add_tracking_uri(p)
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    before_ray_import(args.ray_address)  # the sweep's modules import Ray
    from ..sweep import SweepError, tune_sweep
    from ..sweep.report import format_result

    extra = [f"tune.num_samples={args.samples}"] if args.samples is not None else []
    cfg = load(args, extra)
    resume = resume_of(args)
    if not resume and cfg.tune is None:
        raise SweepError(
            f"{args.file} has no tune: section; see docs/tune.md (experiments/digits_tune.yaml is an example)"
        )
    overrides = [*args.overrides, *extra]
    print(format_result(tune_sweep(cfg, resume=resume, address=args.ray_address, overrides=overrides)))
    return EXIT_OK
