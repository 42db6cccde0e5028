"""The ``moco`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from moco_core.config import ConfigError, load_config
from moco_core.data import DataError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class CliError(RuntimeError):
    """A failure that ends the command with a message and exit code 1 (no traceback)."""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="experiment YAML file (see experiments/)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set moco.temperature=0.2 (repeatable; validated like the file)",
    )


def _load(args: argparse.Namespace, extra: Sequence[str] = ()):
    return load_config(args.file, [*args.overrides, *extra])


# ---------------------------------------------------------------------------------------------
# commands


def cmd_data_digits(args: argparse.Namespace) -> int:
    from moco_core.digits import write_digits

    counts = write_digits(args.out, image_size=args.image_size, seed=args.seed)
    print(f"wrote scikit-learn's digits to {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return EXIT_OK


def cmd_data_validate(args: argparse.Namespace) -> int:
    from moco_core.data import validate_dataset

    cols = args.label_columns.split(",") if args.label_columns else None
    report = validate_dataset(args.root, args.splits_dir, cols, decode=not args.no_decode)
    print(report.format())
    return EXIT_OK if report.ok else EXIT_FAIL


def _pretrain_overrides(args: argparse.Namespace) -> list[str]:
    extra = []
    if args.workers is not None:
        extra.append(f"scaling.workers={args.workers}")
    if args.gpu:
        extra.append("scaling.use_gpu=true")
    return extra


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .train import pretrain

    cfg = _load(args, _pretrain_overrides(args))
    resume: bool | str = False
    if args.resume is not None:
        resume = args.resume or True
    result = pretrain(cfg, resume=resume, address=args.address)
    _print_result(result)
    return EXIT_OK


def _print_result(result) -> None:
    print(f"\nrun {result.run_name} finished")
    for k, v in sorted(result.metrics.items()):
        if k.startswith(("train/loss", "eval/")):
            print(f"  {k:<20} {v:.4f}")
    print(f"  checkpoint           {result.checkpoint_path}")
    print(f"  MLflow run           {result.mlflow_run_id}  ({result.tracking_uri})")
    if result.registered:
        r = result.registered
        champ = "now champion" if r["champion"] else "champion unchanged"
        print(f"  registered           {r['model_uri']} ({champ})")
    if result.tracking_uri.startswith("sqlite:///"):
        db = result.tracking_uri[len("sqlite:///") :]
        print(f"\nbrowse: mlflow ui --backend-store-uri sqlite:///{db}   (then open http://127.0.0.1:5000)")
    if result.registered:
        name = result.registered["name"]
        print(f"pull:   moco encoders pull models:/{name}@champion --out encoder/")


def cmd_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import quickstart

    return quickstart(workdir=Path(args.workdir), epochs=args.epochs, workers=args.workers)


def cmd_encoders_list(args: argparse.Namespace) -> int:
    from .registry import connect, list_encoders
    from .tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(None)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        print(f"no registered encoders: no MLflow store at {uri} (run moco pretrain or moco quickstart here, "
              f"or set MLFLOW_TRACKING_URI)")
        return EXIT_OK
    connect()
    models = list_encoders()
    if not models:
        print(f"no registered encoders in {uri} (run moco pretrain or moco quickstart first)")
        return EXIT_OK
    for m in models:
        aliases = ", ".join(f"{a}=v{v}" for a, v in sorted(m.get("aliases", {}).items())) or "-"
        print(f"{m['name']}  aliases: {aliases}")
        for v in m.get("versions", []):
            value = "-" if v.get("value") is None else f"{v['value']:.4f}"
            tags = f"  @{' @'.join(v['aliases'])}" if v.get("aliases") else ""
            print(f"  v{v['version']:<4} {v.get('metric') or '-'} = {value}   run {v.get('run_id')}{tags}")
    return EXIT_OK


def cmd_encoders_pull(args: argparse.Namespace) -> int:
    from .registry import connect, is_local_ref, pull

    if not is_local_ref(args.ref):
        connect()
    out = pull(args.ref, args.out)
    print(f"pulled {args.ref} into {out}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moco",
        description="Self-supervised pretraining of image encoders with MoCo on Ray, tracked in MLflow.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("quickstart", help="the main job: digits dataset -> pretrain -> evaluate -> register",
                       description="Write scikit-learn's digits, pretrain MoCo v2 on a local Ray cluster, compare "
                                   "its kNN accuracy with a random-init encoder, and register the encoder in MLflow.")
    p.add_argument("--workdir", default=".", help="where data/, runs/ and mlflow.db go (default: here)")
    p.add_argument("--epochs", type=int, default=None, help="override optim.epochs of experiments/digits.yaml")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers (default: from digits.yaml)")
    p.set_defaults(func=cmd_quickstart)

    data = sub.add_parser("data", help="datasets in the seed format").add_subparsers(dest="data_cmd", required=True)
    p = data.add_parser("digits", help="write scikit-learn's digits (real handwritten digits) in the seed layout")
    p.add_argument("out", metavar="OUT", help="output folder (created)")
    p.add_argument("--image-size", type=int, default=32, help="side of the written PNGs (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split")
    p.set_defaults(func=cmd_data_digits)
    p = data.add_parser("validate", help="check a dataset: every CSV row, file and image; exit 1 on any fault")
    p.add_argument("root", metavar="ROOT", help="dataset root (holds train/, val/, test/)")
    p.add_argument("--splits-dir", default=None, metavar="DIR", help="folder of train.csv/val.csv/test.csv")
    p.add_argument("--label-columns", default=None, metavar="A,B", help="label columns (default: all but Path)")
    p.add_argument("--no-decode", action="store_true", help="check files exist without decoding images")
    p.set_defaults(func=cmd_data_validate)

    p = sub.add_parser("pretrain", help="pretrain an encoder with Ray Train (local cluster by default)",
                       description="Pretrain with MoCo through Ray Train. Runs on a local Ray cluster unless "
                                   "--address or RAY_ADDRESS names one. Logs to MLflow and registers the encoder.")
    _add_config_args(p)
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers (sets scaling.workers)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (sets scaling.use_gpu)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN",
                   help="continue the latest unfinished run of this experiment, or the named RUN, "
                        "from its last checkpoint and in the same MLflow run")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else local)")
    p.set_defaults(func=cmd_pretrain)

    enc = sub.add_parser("encoders", help="registered encoders").add_subparsers(dest="enc_cmd", required=True)
    p = enc.add_parser("list", help="registered encoders, versions, aliases and scores")
    p.set_defaults(func=cmd_encoders_list)
    p = enc.add_parser("pull", help="download an encoder package (weights.pt + encoder.json)")
    p.add_argument("ref", metavar="REF", help="models:/NAME@ALIAS, models:/NAME/VERSION, a run id, or a folder")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.set_defaults(func=cmd_encoders_pull)

    # Commands whose code lives in their own module; each adds its parsers (heavy imports stay lazy).
    from . import evaluation, jobs, tune

    for module in (evaluation, tune, jobs):
        module.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from .errors import user_errors

    try:
        return args.func(args)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["main", "build_parser", "CliError", "ConfigError", "DataError"]
