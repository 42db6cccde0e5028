"""``moco data``: datasets in the seed format (write the digits, validate a dataset)."""

from __future__ import annotations

import argparse

from .codes import EXIT_FAIL, EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="datasets in the seed format").add_subparsers(
        dest="data_cmd", required=True
    )
    p = data.add_parser(
        "digits", help="write scikit-learn's digits (real handwritten digits) in the seed layout"
    )
    p.add_argument("out", metavar="OUT", help="output folder (created)")
    p.add_argument("--image-size", type=int, default=32, help="side of the written PNGs (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split")
    p.set_defaults(func=cmd_digits)
    p = data.add_parser(
        "validate", help="check a dataset: every CSV row, file and image; exit 1 on any fault"
    )
    p.add_argument("root", metavar="ROOT", help="dataset root (holds train/, val/, test/)")
    p.add_argument("--splits-dir", default=None, metavar="DIR", help="folder of train.csv/val.csv/test.csv")
    p.add_argument(
        "--label-columns", default=None, metavar="A,B", help="label columns (default: all but Path)"
    )
    p.add_argument("--no-decode", action="store_true", help="check files exist without decoding images")
    p.set_defaults(func=cmd_validate)


def cmd_digits(args: argparse.Namespace) -> int:
    from moco_core.digits import write_digits

    counts = write_digits(args.out, image_size=args.image_size, seed=args.seed)
    print(f"wrote scikit-learn's digits to {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from moco_core.data import validate_dataset

    cols = args.label_columns.split(",") if args.label_columns else None
    report = validate_dataset(args.root, args.splits_dir, cols, decode=not args.no_decode)
    print(report.format())
    return EXIT_OK if report.ok else EXIT_FAIL
