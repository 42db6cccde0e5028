"""``moco config``: the resolved config a run would use, and the JSON schema of experiment files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .codes import EXIT_OK
from .options import add_config, load


def add_commands(sub: argparse._SubParsersAction) -> None:
    cfg = sub.add_parser("config", help="experiment files: the resolved config, the JSON schema")
    actions = cfg.add_subparsers(dest="config_cmd", required=True, metavar="ACTION")
    p = actions.add_parser(
        "show",
        help="print the resolved, validated config (YAML) a run of FILE would use",
        description="Read FILE and its base: chain, apply --set, validate, and print the result as YAML "
        "with every default filled in: what `moco pretrain FILE` (or `moco tune FILE`) would use. "
        "The output is itself an experiment file.",
    )
    add_config(p)
    p.set_defaults(func=cmd_show)
    p = actions.add_parser(
        "schema",
        help="write the JSON schema of experiment files (for editors)",
        description="Write the JSON schema of an experiment file: every section, key, type, default and "
        "bound. YAML editors check and complete experiment files with it, e.g. with the line "
        "`# yaml-language-server: $schema=moco.schema.json` at the top of the file.",
    )
    p.add_argument("--out", default=None, metavar="FILE", help="write here instead of to stdout")
    p.set_defaults(func=cmd_schema)


def cmd_show(args: argparse.Namespace) -> int:
    from moco_core.config import dump_yaml

    sys.stdout.write(dump_yaml(load(args)))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from moco_core.config import json_schema

    from ..progress import say

    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
        return EXIT_OK
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    say(f"wrote the JSON schema of experiment files to {out}")
    return EXIT_OK
