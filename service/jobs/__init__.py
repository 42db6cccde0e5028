"""Experiments on a remote Ray cluster through the Ray Jobs API: :mod:`.cluster` (dashboard address,
auth token, client), :mod:`.submit` (``moco submit``) and :mod:`.status` (status, failure reason, logs).
The commands themselves are in :mod:`service.cli.jobs`."""

from .cluster import JobsError, find_token, is_loopback, jobs_client, resolve_address
from .status import TERMINAL, failure_reason, format_status, wait_for
from .submit import check_cluster_paths, job_tracking_uri, package, submit

__all__ = [
    "JobsError",
    "TERMINAL",
    "jobs_client",
    "submit",
    "resolve_address",
    "is_loopback",
    "find_token",
    "job_tracking_uri",
    "check_cluster_paths",
    "package",
    "failure_reason",
    "format_status",
    "wait_for",
]
