"""The ``moco`` command line: one module per command group, the shared options defined once
(:mod:`.options`).

Building the parser imports neither torch, nor Ray, nor MLflow (each command imports what it needs
when it runs), so ``moco --help`` and ``moco <command> --help`` answer at once. A
:class:`~moco_core.errors.UserError` ends a command with ``error: ...`` and exit 1; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from moco_core.errors import UserError

from ..terminal import quiet_other_tools
from . import config, data, embed, encoders, evaluate, jobs, train, tune
from .codes import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_OK
from .options import tracking_uri_env

COMMAND_GROUPS = (train, data, tune, evaluate, embed, encoders, jobs, config)  # the order of `moco --help`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moco",
        description="Self-supervised pretraining of image encoders with MoCo on Ray, tracked in MLflow.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_commands(sub)
    return parser


def _version() -> str:
    from moco_core import __version__

    return __version__


class _Stderr(logging.StreamHandler):
    """Log lines to whatever ``sys.stderr`` is when they are written (not the one of the first call:
    ``main`` may run many times in one process, each with its own stderr)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(message)s", handlers=[_Stderr()])
    logging.getLogger().setLevel(level)  # basicConfig acts once per process; -v counts on every call
    quiet_other_tools(args.verbose)
    try:
        with tracking_uri_env(args):  # --tracking-uri, on the commands that talk to MLflow
            return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FAIL"]
