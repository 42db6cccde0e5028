"""``moco encoders``: the registered encoders of the project's MLflow store, and pulling one."""

from __future__ import annotations

import argparse
from pathlib import Path

from .codes import EXIT_OK
from .options import add_tracking_uri


def add_commands(sub: argparse._SubParsersAction) -> None:
    enc = sub.add_parser("encoders", help="registered encoders").add_subparsers(dest="enc_cmd", required=True)
    p = enc.add_parser("list", help="registered encoders, versions, aliases and scores")
    add_tracking_uri(p)
    p.set_defaults(func=cmd_list)
    p = enc.add_parser("pull", help="download an encoder package (weights.pt + encoder.json)")
    p.add_argument(
        "ref", metavar="REF", help="models:/NAME@ALIAS, models:/NAME/VERSION, a run id, or a folder"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_tracking_uri(p)
    p.set_defaults(func=cmd_pull)


def cmd_list(args: argparse.Namespace) -> int:
    from .. import tracking
    from ..registry import list_encoders

    uri = tracking.resolve_tracking_uri(None)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        print(
            f"no registered encoders: no MLflow store at {uri} (run moco pretrain or moco quickstart here, "
            f"or give --tracking-uri / MLFLOW_TRACKING_URI)"
        )
        return EXIT_OK
    tracking.check_reachable(uri)
    models = list_encoders(uri)
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


def cmd_pull(args: argparse.Namespace) -> int:
    from .. import tracking
    from ..registry import is_local_ref, pull

    uri = tracking.resolve_tracking_uri(None)
    if not is_local_ref(args.ref):
        tracking.check_reachable(uri)
    out = pull(args.ref, args.out, uri)
    print(f"pulled {args.ref} into {out}")
    return EXIT_OK
