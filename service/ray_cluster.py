"""The Ray cluster a command runs on: the one named by ``--ray-address`` or ``RAY_ADDRESS``, else a new
local cluster whose dashboard listens on loopback only."""

from __future__ import annotations

import logging
import os


def ensure_ray(address: str | None = None) -> None:
    """Connect to (or start) the cluster once per process."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:  # a local cluster; its dashboard (needed by Ray Train's state API) listens on loopback only
        ray.init(dashboard_host="127.0.0.1", log_to_driver=True, logging_level="WARNING")


def quiet_ray_train_logs() -> None:
    """Ray Train logs every report and checkpoint at INFO on each worker, and the driver echoes those
    lines; the progress line says the same. Warnings and errors still show."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("ray.train") or "/ray/train/" in name:
            logging.getLogger(name).setLevel(logging.WARNING)


__all__ = ["ensure_ray", "quiet_ray_train_logs"]
