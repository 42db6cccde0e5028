"""A job's state as a person reads it: its status, why it failed, its logs as they come."""

from __future__ import annotations

import sys
import time
from datetime import datetime

from .cluster import JobsError, call, job_info, short_reason

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def failure_reason(info, logs: str | None) -> str:
    """What went wrong, in a few lines: the job's ``error:`` lines if it printed any, else Ray's message."""
    lines = (logs or "").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    if starts:
        return "\n".join(lines[starts[-1] :][:20])
    message = (info.message or "").strip()
    first = message.splitlines()[0] if message else ""
    tail = [line for line in lines if line.strip()][-10:]
    return "\n".join([first, *tail]) if tail else first or f"error type {info.error_type}"


def when(ts_ms: int | None) -> str:
    return datetime.fromtimestamp(ts_ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ts_ms else "-"


def format_status(info, reason: str | None = None) -> str:
    meta = info.metadata or {}
    status = str(getattr(info.status, "value", info.status))
    out = [f"job {info.submission_id}: {status}"]
    rows = [
        ("experiment", f"{meta.get('moco_command', '?')} {meta.get('moco_name', '?')}" if meta else None),
        ("entrypoint", info.entrypoint),
        ("started", when(info.start_time)),
        ("ended", when(info.end_time) if info.end_time else None),
        ("MLflow", meta.get("moco_tracking_uri")),
    ]
    if status != "FAILED" and info.message:
        rows.append(("message", info.message.strip().splitlines()[0]))
    out += [f"  {k:<11} {v}" for k, v in rows if v]
    if reason:
        out.append("  reason:")
        out += [f"    {line}" for line in reason.splitlines()]
    return "\n".join(out)


def wait_for(client, job_id: str, statuses: tuple[str, ...] = TERMINAL, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(job_info(client, job_id).status.value)
        if status in statuses or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def follow_logs(client, job_id: str, out=None) -> None:
    """Print the job's logs as they come until the job ends."""
    import asyncio

    out = out or sys.stdout
    job_info(client, job_id)  # an unknown id is an error here, not a silent empty stream

    async def _tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(_tail())
    except RuntimeError as e:
        raise JobsError(f"following the logs of job {job_id}: {e}") from None
    except OSError as e:  # aiohttp client errors are OSErrors
        raise JobsError(
            f"following the logs of job {job_id}: lost the Ray dashboard ({short_reason(e)})"
        ) from None


def status_exit(client, job_id: str, print_reason: bool = True) -> int:
    """Exit code of a job: 1 when it failed (the reason goes to stderr), else 0."""
    info = job_info(client, job_id)
    status = str(info.status.value)
    if status == "FAILED":
        if print_reason:
            logs = call(client, "logs", client.get_job_logs, job_id)
            print(format_status(info, failure_reason(info, logs)), file=sys.stderr)
        return 1
    return 0


__all__ = ["TERMINAL", "failure_reason", "format_status", "wait_for", "follow_logs", "status_exit", "when"]
