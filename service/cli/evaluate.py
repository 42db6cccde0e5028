"""``moco evaluate``: what an encoder is worth downstream (see :mod:`service.evaluation.run`)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..evaluation.choices import BASELINES, DEFAULT_PROTOCOLS, JSON_NAME, PROTOCOL_METAVAR
from .codes import EXIT_OK
from .options import add_splits, add_tracking_uri, label_columns_of


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure an encoder downstream: kNN, linear probe, fine-tune; vs a random init",
        description="Measure an encoder on a labelled dataset (seed format) with frozen-feature kNN, a "
        "linear probe, the reference's linear classification and/or fine-tuning, at one or more label "
        "fractions, on the test partition: top-1 accuracy (multi-class) or AUROC (binary, "
        "multi-label) with a bootstrap 95% "
        "interval. Prints a table, writes a JSON file and logs an MLflow run linked to the "
        "encoder's training run.",
    )
    p.add_argument(
        "encoder",
        metavar="ENCODER",
        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID, a run id, or an encoder folder",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="ROOT",
        help="dataset root (holds train/, val/, test/); may be left out with --store: the partitions "
        "are then the store's copies of the CSVs",
    )
    add_splits(p)
    p.add_argument(
        "--store",
        default=None,
        metavar="STORE",
        help="read the images from this prepared store (moco data prepare): a folder, or s3://BUCKET/PREFIX "
        "(credentials and AWS_ENDPOINT_URL from the environment) read through data.store_cache",
    )
    p.add_argument(
        "--prepare",
        action="store_true",
        help="prepare --store from --data first (or finish it, or bring it up to date), at the encoder's "
        "size and channels, on the Ray cluster of RAY_ADDRESS or a local one",
    )
    p.add_argument(
        "--protocol",
        nargs="+",
        action="extend",
        default=None,
        dest="protocols",
        metavar=PROTOCOL_METAVAR,
        help=f"protocols to run (default: {' '.join(DEFAULT_PROTOCOLS)}; finetune trains the "
        f"whole encoder; lincls is the MoCo reference's linear classification: a linear head on the "
        f"frozen encoder, SGD lr 30, 100 epochs of random-resized crops and flips, lr x0.1 at 60 and 80)",
    )
    p.add_argument(
        "--label-fraction",
        nargs="+",
        action="extend",
        type=float,
        default=None,
        metavar="F",
        dest="fractions",
        help="fractions of the train labels to use, stratified and seeded, e.g. 0.01 0.1 1.0 (default: 1.0)",
    )
    p.add_argument(
        "--baseline",
        choices=BASELINES,
        default=None,
        help="also evaluate a random-init encoder of the same architecture, side by side",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of label fractions, heads, baseline and bootstrap"
    )
    p.add_argument(
        "--out", default=JSON_NAME, metavar="FILE.json", help=f"JSON results (default: {JSON_NAME})"
    )
    p.add_argument("--no-track", action="store_true", help="do not log an MLflow run")
    add_tracking_uri(p)
    p.add_argument("--knn-k", type=int, default=None, help="neighbours of the kNN vote (default: eval.knn_k)")
    p.add_argument(
        "--knn-t", type=float, default=None, help="temperature of the kNN vote (default: eval.knn_t)"
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=None,
        metavar="N",
        help="test-set resamples of the 95%% interval (default 1000; 0: none)",
    )
    p.add_argument(
        "--linear-epochs",
        type=int,
        default=None,
        metavar="N",
        help="linear probe epochs over the labelled set (default 100, at least 300 steps)",
    )
    p.add_argument(
        "--finetune-epochs", type=int, default=None, metavar="N", help="fine-tune epochs (default 10)"
    )
    p.add_argument("--finetune-lr", type=float, default=None, help="fine-tune learning rate (default 0.01)")
    p.add_argument(
        "--finetune-max-steps",
        type=int,
        default=None,
        metavar="N",
        help="cap each fine-tune epoch at N steps (quick trials)",
    )
    p.add_argument("--lincls-epochs", type=int, default=None, metavar="N", help="lincls epochs (default 100)")
    p.add_argument(
        "--lincls-max-steps",
        type=int,
        default=None,
        metavar="N",
        help="cap each lincls epoch at N steps (quick trials)",
    )
    p.set_defaults(func=cmd_evaluate)


def parse_evaluate_args(argv: list[str]) -> argparse.Namespace:
    """``moco evaluate ARGV`` parsed as ``moco`` parses it (a bad one exits 2 with its usage)."""
    parser = argparse.ArgumentParser(prog="moco")
    add_commands(parser.add_subparsers())
    return parser.parse_args(["evaluate", *argv])


def settings_of(args: argparse.Namespace) -> Any:
    """The protocols' settings: the defaults, with what the flags give."""
    from moco_core.eval import EvaluationError, ProtocolSettings

    s = ProtocolSettings()
    knn = {"knn_k": args.knn_k, "knn_t": args.knn_t, "bootstrap": args.bootstrap}
    s = replace(s, **{k: v for k, v in knn.items() if v is not None})
    if args.linear_epochs is not None:
        s = replace(s, linear=replace(s.linear, epochs=args.linear_epochs))
    ft = {
        "epochs": args.finetune_epochs,
        "lr": args.finetune_lr,
        "max_steps_per_epoch": args.finetune_max_steps,
    }
    s = replace(s, finetune=replace(s.finetune, **{k: v for k, v in ft.items() if v is not None}))
    lin = {"epochs": args.lincls_epochs, "max_steps_per_epoch": args.lincls_max_steps}
    s = replace(s, lincls=replace(s.lincls, **{k: v for k, v in lin.items() if v is not None}))
    problems = [
        f"--knn-k must be at least 1, not {s.knn_k}" if s.knn_k < 1 else "",
        f"--knn-t must be positive, not {s.knn_t}" if not s.knn_t > 0 else "",
        f"--bootstrap must be 0 or more, not {s.bootstrap}" if s.bootstrap < 0 else "",
        f"--linear-epochs must be at least 1, not {s.linear.epochs}" if s.linear.epochs < 1 else "",
        f"--finetune-epochs must be at least 1, not {s.finetune.epochs}" if s.finetune.epochs < 1 else "",
        f"--finetune-lr must be positive, not {s.finetune.lr}" if not s.finetune.lr > 0 else "",
        f"--lincls-epochs must be at least 1, not {s.lincls.epochs}" if s.lincls.epochs < 1 else "",
    ]
    if any(problems):
        raise EvaluationError("; ".join(p for p in problems if p))
    return s


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.report import format_table
    from ..evaluation.run import evaluate

    labels = label_columns_of(args)
    report = evaluate(
        args.encoder,
        args.data,
        splits_dir=args.splits_dir,
        store=args.store,
        label_columns=labels,
        protocols=list(dict.fromkeys(args.protocols or DEFAULT_PROTOCOLS)),
        fractions=list(dict.fromkeys(args.fractions or [1.0])),
        baseline=args.baseline,
        seed=args.seed,
        settings=settings_of(args),
        track=not args.no_track,
        out=Path(args.out),
        prepare=args.prepare,
    )
    print(format_table(report))
    print(f"\nresults: {args.out}")
    if report["mlflow"]:
        m = report["mlflow"]
        print(f"MLflow run: {m['run_id']} in experiment {m['experiment_name']!r} ({m['tracking_uri']})")
    return EXIT_OK
