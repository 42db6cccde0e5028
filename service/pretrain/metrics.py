"""Rank 0's metrics to MLflow: buffered, sent in batches off the training thread, never lost or
duplicated by an outage.

``log`` only appends to a buffer; a sender thread sends it in batches every ``flush_every_s``. An MLflow
outage (a server stopped or restarted, longer than the client's timeout) never stalls a training step:
the buffer is kept and sent again until the server answers, the outage reported once and its end once.
At an epoch end ``flush`` waits a bounded time for the buffer to drain (so that what a checkpoint covers
is in the run before a restart skips it); ``close`` waits longer, then reports what it could not send.
A restarted worker skips the steps the run already has, so a run resumed from a checkpoint has neither
gaps nor duplicate steps; a batch sent again after a timeout holds the same values and timestamps, which
the store keeps once.
"""

from __future__ import annotations

import logging
import threading
import time

from mlflow.entities import Metric

from .. import tracking

log = logging.getLogger(__name__)


class MetricLogger:
    """Buffered metric logging to one run from a sender thread, with retry and resume de-duplication."""

    def __init__(self, uri: str, run_id: str, flush_every_s: float = 10.0) -> None:
        self.client = tracking.client(uri)
        self.uri, self.run_id, self.flush_every_s = uri, run_id, flush_every_s
        self.buffer: list[Metric] = []
        self.lock = threading.Lock()
        self.wake, self.drained, self.stopping = threading.Event(), threading.Event(), False
        self.drained.set()
        self.failing = False
        self.logged_upto: dict[str, int] = {}
        try:
            for key in self.client.get_run(run_id).data.metrics:
                hist = self.client.get_metric_history(run_id, key)
                self.logged_upto[key] = max((m.step for m in hist), default=-1)
        except Exception as e:  # noqa: BLE001 - unreachable now: log anyway, sent later
            log.warning("MLflow %s: could not read metric history of run %s: %s", uri, run_id, e)
        self.sender = threading.Thread(target=self._send_loop, name="mlflow-metrics", daemon=True)
        self.sender.start()

    def log(self, metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        with self.lock:
            for k, v in metrics.items():
                if step <= self.logged_upto.get(k, -1):
                    continue  # already in the run (logged before a restart)
                self.buffer.append(Metric(k, float(v), ts, step))
                self.logged_upto[k] = step
            if self.buffer:
                self.drained.clear()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Ask the sender to send now and wait up to ``timeout_s`` (not at all while MLflow is known to be
        unreachable); ``True`` when nothing is left."""
        self.wake.set()
        return self.drained.wait(0 if self.failing else timeout_s)

    def close(self, timeout_s: float = 60.0) -> bool:
        """Send what is left (waiting up to ``timeout_s`` for MLflow) and stop the sender; ``False``
        when some metrics could not be sent."""
        self.wake.set()
        done = self.drained.wait(timeout_s)
        self.stopping = True
        self.wake.set()
        self.sender.join(timeout=1.0)
        if not done:
            log.error("MLflow %s: %d metrics of run %s not sent", self.uri, len(self.buffer), self.run_id)
        return done

    def _send_loop(self) -> None:
        while not self.stopping:
            self.wake.wait(self.flush_every_s)
            self.wake.clear()
            if not self._send_all() and not self.stopping:
                time.sleep(1.0)  # the server is down: retry soon, not in a tight loop

    def _send_all(self) -> bool:
        """Send the buffer in batches of 1000; keep what failed. ``True`` when nothing is left."""
        while True:
            with self.lock:
                batch = self.buffer[:1000]
                if not batch:
                    self.drained.set()  # under the lock: a metric logged meanwhile clears it again
                    break
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception as e:  # noqa: BLE001 - keep training; metrics stay buffered
                if not self.failing:
                    log.error("MLflow %s unreachable, metrics kept and sent again: %s", self.uri, e)
                self.failing = True
                return False
            with self.lock:
                del self.buffer[: len(batch)]
        if self.failing:
            log.warning("MLflow %s reachable again; the metrics kept meanwhile are sent", self.uri)
        self.failing = False
        return True


__all__ = ["MetricLogger"]
