"""``moco submit`` and ``moco jobs``: experiments on a remote Ray cluster (see :mod:`service.jobs`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..jobs.cluster import JobsError, call, job_info, jobs_client
from ..jobs.status import TERMINAL, failure_reason, follow_logs, format_status, status_exit, wait_for, when
from ..jobs.submit import submit, submit_evaluation
from .options import (
    add_config,
    add_dashboard_address,
    add_resume,
    add_scaling,
    add_tracking_uri,
    load,
    scaling_overrides,
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "submit",
        help="submit an experiment (or an evaluation) to a Ray cluster (Ray Jobs API)",
        description="Validate the experiment here and submit it to a Ray cluster as a job that runs "
        "`moco pretrain` (or `moco tune` with --tune) on the head node. The validated config "
        "travels with the job. Data paths and run.storage_path must be paths every node sees; "
        "the MLflow tracking URI (--tracking-uri) must be one the cluster can reach, e.g. "
        "http://mlflow:5000; a local store only serves a cluster on this machine. "
        "With --evaluate, the job runs `moco evaluate` instead (no FILE): "
        "moco submit --address URL [--gpu] --evaluate ENCODER --data /shared/ROOT [evaluate's options].",
    )
    add_config(p, example="optim.epochs=100", required=False)
    add_dashboard_address(p)
    p.add_argument(
        "--tune", action="store_true", help="run a Ray Tune sweep (`moco tune`) instead of one pretraining"
    )
    p.add_argument(
        "--code",
        choices=("upload", "image"),
        default="upload",
        help="upload: send this checkout's moco_core/ and service/ with the job (default); "
        "image: use the project installed in the cluster's image",
    )
    add_tracking_uri(p)  # the job's store: one the cluster reaches (a local store only on this machine)
    add_scaling(p)
    add_resume(
        p,
        "RUN",
        "continue the latest unfinished run (sweep, with --tune) of this experiment, or the named "
        "one, from its checkpoints under run.storage_path, in the same MLflow run",
    )
    p.add_argument(
        "--wait", action="store_true", help="follow the job's logs until it ends; exit 1 if it fails"
    )
    p.add_argument(
        "--evaluate",
        nargs=argparse.REMAINDER,
        default=None,
        metavar="ENCODER ...",
        help="run `moco evaluate ENCODER ...` on the cluster instead of an experiment; everything after "
        "--evaluate is moco evaluate's (put submit's own options before it). Its paths must be paths "
        "every node sees; the results go to the MLflow run (evaluation.json); with --gpu the job's "
        "driver runs on a node with a GPU",
    )
    p.set_defaults(func=cmd_submit)

    jobs = sub.add_parser("jobs", help="jobs on a Ray cluster: list, status, logs, stop").add_subparsers(
        dest="jobs_cmd", required=True, metavar="ACTION"
    )
    p = jobs.add_parser("list", help="the cluster's jobs and their status")
    add_dashboard_address(p)
    p.set_defaults(func=cmd_jobs_list)
    for action, helptext, func in (
        ("status", "a job's status; when it failed, the reason (exit 1)", cmd_jobs_status),
        ("logs", "a job's output (training progress, errors)", cmd_jobs_logs),
        ("stop", "stop a job and wait until it has stopped", cmd_jobs_stop),
    ):
        p = jobs.add_parser(action, help=helptext)
        p.add_argument("job_id", metavar="ID", help="submission id printed by `moco submit`")
        if action == "logs":
            p.add_argument(
                "--follow",
                "-f",
                action="store_true",
                help="keep printing until the job ends; exit 1 if it failed",
            )
        if action == "stop":
            p.add_argument(
                "--timeout",
                type=float,
                default=60.0,
                metavar="S",
                help="seconds to wait for the stop (default 60)",
            )
        add_dashboard_address(p)
        p.set_defaults(func=func)


def cmd_submit(args: argparse.Namespace) -> int:
    if args.evaluate is not None:
        return cmd_submit_evaluation(args)
    if args.file is None:
        raise JobsError("give the experiment FILE to submit (or --evaluate ENCODER ... for an evaluation)")
    extra = scaling_overrides(args)
    cfg = load(args, extra)
    job_id, client = submit(
        cfg,
        args.address,
        tune=args.tune,
        code=args.code,
        tracking_uri=args.tracking_uri,
        resume=args.resume,
        overrides=[*args.overrides, *extra],
    )
    return follow_or_print(args, job_id, client)


def cmd_submit_evaluation(args: argparse.Namespace) -> int:
    """``moco submit --evaluate ENCODER ...``: moco evaluate's arguments checked here with its own
    parser and settings, then submitted."""
    from .evaluate import parse_evaluate_args, settings_of

    given = [
        name
        for name, on in (
            ("FILE", args.file),
            ("--set", args.overrides),
            ("--tune", args.tune),
            ("--resume", args.resume is not None),
            ("--workers", args.workers),
        )
        if on
    ]
    if given:
        raise JobsError(f"--evaluate submits moco evaluate, not an experiment: leave out {', '.join(given)}")
    if not args.evaluate:
        raise JobsError("--evaluate needs an encoder: moco submit --evaluate ENCODER --data ROOT ...")
    ev = parse_evaluate_args(args.evaluate)
    settings_of(ev)  # bad numbers named before the job exists
    if ev.no_track and not Path(ev.out).is_absolute():
        raise JobsError(
            f"--no-track with --out {ev.out}: the job's working folder is discarded when it ends; "
            "track the evaluation in MLflow, or give --out an absolute path every node sees"
        )
    local = Path(ev.encoder)
    paths = {"--data": ev.data, "--splits-dir": ev.splits_dir, "--store": ev.store}
    if ev.encoder.startswith((".", "/")) or local.exists():  # an encoder folder, not a registry ref
        paths["ENCODER"] = ev.encoder
    job_id, client = submit_evaluation(
        args.evaluate,
        ev.encoder,
        paths,
        args.address,
        code=args.code,
        tracking_uri=args.tracking_uri or ev.tracking_uri,
        gpu=args.gpu,
    )
    return follow_or_print(args, job_id, client)


def follow_or_print(args: argparse.Namespace, job_id: str, client) -> int:
    """After a submission: the commands to follow the job, or (``--wait``) its logs until it ends."""
    address = client._address
    print(f"submitted job {job_id} to {address}")
    if not args.wait:
        addr = "" if os.environ.get("RAY_API_SERVER_ADDRESS") == address else f" --address {address}"
        print(f"  status: moco jobs status {job_id}{addr}")
        print(f"  logs:   moco jobs logs {job_id} --follow{addr}")
        print(f"  stop:   moco jobs stop {job_id}{addr}")
        return 0
    follow_logs(client, job_id)
    status = wait_for(client, job_id, timeout_s=30)
    print(f"job {job_id}: {status}", file=sys.stderr)
    return status_exit(client, job_id)


def cmd_jobs_list(args: argparse.Namespace) -> int:
    client = jobs_client(args.address)
    jobs = [j for j in call(client, "list", client.list_jobs) if j.submission_id]
    if not jobs:
        print(f"no jobs on {client._address}")
        return 0
    jobs.sort(key=lambda j: j.start_time or 0)
    print(f"{'JOB':<44} {'STATUS':<10} {'STARTED':<20} EXPERIMENT")
    for j in jobs:
        meta = j.metadata or {}
        what = (
            f"{meta['moco_command']} {meta.get('moco_name', '')}"
            if "moco_command" in meta
            else j.entrypoint[:40]
        )
        print(f"{j.submission_id:<44} {str(j.status.value):<10} {when(j.start_time):<20} {what}")
    return 0


def cmd_jobs_status(args: argparse.Namespace) -> int:
    client = jobs_client(args.address)
    info = job_info(client, args.job_id)
    status = str(info.status.value)
    if status == "FAILED":
        logs = call(client, "logs", client.get_job_logs, args.job_id)
        print(format_status(info, failure_reason(info, logs)))
        return 1
    print(format_status(info))
    return 0


def cmd_jobs_logs(args: argparse.Namespace) -> int:
    client = jobs_client(args.address)
    if args.follow:
        follow_logs(client, args.job_id)
        status = wait_for(client, args.job_id, timeout_s=30)
        print(f"job {args.job_id}: {status}", file=sys.stderr)
        return status_exit(client, args.job_id, print_reason=False)
    job_info(client, args.job_id)
    sys.stdout.write(call(client, "logs", client.get_job_logs, args.job_id))
    return 0


def cmd_jobs_stop(args: argparse.Namespace) -> int:
    client = jobs_client(args.address)
    before = str(job_info(client, args.job_id).status.value)
    if before in TERMINAL:
        print(f"job {args.job_id} already ended: {before}")
        return 0
    call(client, "stop", client.stop_job, args.job_id)
    status = wait_for(client, args.job_id, timeout_s=args.timeout)
    if status not in TERMINAL:
        raise JobsError(
            f"job {args.job_id} is still {status} {args.timeout:.0f} s after the stop request; "
            "check `moco jobs status` again, or the Ray dashboard"
        )
    print(f"job {args.job_id}: {status}")
    return 0
