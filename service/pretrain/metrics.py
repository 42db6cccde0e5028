"""Rank 0's metrics to MLflow: buffered, sent in batches, retried, never duplicated.

A failed send keeps the buffer and is retried at the next flush, so an MLflow outage mid-run costs no
metric. A restarted worker skips the steps the run already has, so a run resumed from a checkpoint has
neither gaps nor duplicate steps.
"""

from __future__ import annotations

import logging
import time

from mlflow.entities import Metric

from .. import tracking

log = logging.getLogger(__name__)


class MetricLogger:
    """Buffered metric logging to one run, with retry and resume de-duplication."""

    def __init__(self, uri: str, run_id: str, flush_every_s: float = 10.0) -> None:
        self.client = tracking.client(uri)
        self.uri, self.run_id, self.flush_every_s = uri, run_id, flush_every_s
        self.buffer: list[Metric] = []
        self.last_flush = time.monotonic()
        self.failing = False
        self.logged_upto: dict[str, int] = {}
        try:
            for key in self.client.get_run(run_id).data.metrics:
                hist = self.client.get_metric_history(run_id, key)
                self.logged_upto[key] = max((m.step for m in hist), default=-1)
        except Exception as e:  # noqa: BLE001 - unreachable now: log anyway, retried later
            log.warning("MLflow %s: could not read metric history of run %s: %s", uri, run_id, e)

    def log(self, metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        for k, v in metrics.items():
            if step <= self.logged_upto.get(k, -1):
                continue  # already in the run (logged before a restart)
            self.buffer.append(Metric(k, float(v), ts, step))
        if time.monotonic() - self.last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> bool:
        """Send the buffer; keep it on failure. Returns True when nothing is left to send."""
        self.last_flush = time.monotonic()
        while self.buffer:
            batch = self.buffer[:1000]
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception as e:  # noqa: BLE001 - keep training; metrics stay buffered
                if not self.failing:
                    log.error(
                        "MLflow %s unreachable, %d metrics kept for retry: %s", self.uri, len(self.buffer), e
                    )
                self.failing = True
                return False
            del self.buffer[: len(batch)]
            for m in batch:
                self.logged_upto[m.key] = max(self.logged_upto.get(m.key, -1), m.step)
        if self.failing:
            log.warning("MLflow %s reachable again; buffered metrics sent", self.uri)
        self.failing = False
        return True


__all__ = ["MetricLogger"]
