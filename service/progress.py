"""Progress of a training run on the driver: one live line on a terminal, plain lines in a log.

Rank 0 of the Ray Train workers pushes step summaries into a small Ray queue (at most one per
second); a thread of the driver renders them while ``trainer.fit()`` blocks.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO


def say(text: str) -> None:
    """One line for the person at the terminal, on stderr (stdout stays for results)."""
    print(text, file=sys.stderr, flush=True)


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def format_progress(p: dict[str, Any]) -> str:
    """``epoch 3/20  step 120/800  loss 5.120  312 img/s  ETA 2m10s`` from a progress record."""
    parts = [f"epoch {p['epoch'] + 1}/{p['epochs']}", f"step {p['step']}/{p['total_steps']}"]
    if "train/loss" in p:
        parts.append(f"loss {p['train/loss']:.3f}")
    if "train/images_per_s" in p:
        parts.append(f"{p['train/images_per_s']:.0f} img/s")
    if "eta_s" in p:
        parts.append(f"ETA {format_eta(p['eta_s'])}")
    for k in ("eval/knn_top1", "eval/knn_auroc"):
        if k in p:
            parts.append(f"{k.split('/')[1]} {p[k]:.3f}")
    return "  ".join(parts)


class ProgressPrinter:
    """Renders progress records: a live line on a TTY, a line every ``every_s`` seconds otherwise."""

    def __init__(self, stream: TextIO | None = None, every_s: float = 30.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s
        self.last = float("-inf")  # the first record is always shown
        self.live = False

    def show(self, p: dict[str, Any]) -> None:
        line = format_progress(p)
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.live = True
        elif p.get("kind") == "epoch" or time.monotonic() - self.last >= self.every_s:
            self.stream.write(line + "\n")
            self.last = time.monotonic()
        self.stream.flush()

    def message(self, text: str) -> None:
        self.end_line()
        self.stream.write(text + "\n")
        self.stream.flush()

    def end_line(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.live = False


class ProgressRelay:
    """Driver side: a Ray queue the workers write to, and a thread that prints what arrives."""

    def __init__(self, printer: ProgressPrinter) -> None:
        from ray.util.queue import Queue

        self.queue = Queue(maxsize=1000, actor_options={"num_cpus": 0})
        self.printer = printer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProgressRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._drain()
        self.printer.end_line()
        try:
            self.queue.shutdown()
        except Exception:  # noqa: BLE001 - the queue actor may be gone with the cluster already
            return

    def _drain(self) -> None:
        try:
            while not self.queue.empty():
                self.printer.show(self.queue.get_nowait())
        except Exception:  # noqa: BLE001 - nothing left to read
            return

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.printer.show(self.queue.get(timeout=1.0))
            except Exception:  # noqa: BLE001 - ray.util.queue.Empty on timeout
                continue


class ProgressSender:
    """Worker side (rank 0): throttled, non-blocking pushes of progress records."""

    def __init__(self, queue: Any, every_s: float = 1.0) -> None:
        self.queue, self.every_s, self.last = queue, every_s, 0.0

    def send(self, record: dict[str, Any], force: bool = False) -> None:
        if self.queue is None:
            return
        now = time.monotonic()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        try:
            self.queue.put_nowait(record)
        except Exception:  # noqa: BLE001 - progress is best effort: a full or gone queue never stops training
            return
