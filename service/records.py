"""The record of a run or a sweep: what ``--resume`` needs to continue it, beside its checkpoints.

A training run keeps ``moco_run.json`` in ``run.storage_path/<name>/`` (beside Ray Train's checkpoints)
and a sweep keeps ``moco_sweep.json`` in its Tune experiment folder; both may live on object storage
(:mod:`service.storage`). A record holds the validated config, the tracking URI and the MLflow run it
logs to, and a status; :meth:`Record.mark` is the one place that changes the status, saves the record
and tells MLflow.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from moco_core.config import ExperimentConfig
from moco_core.config.dotted import flatten
from moco_core.errors import UserError

from . import storage, tracking

R = TypeVar("R", bound="Record")

MLFLOW_STATUS = {"running": "RUNNING", "finished": "FINISHED", "failed": "FAILED", "stopped": "KILLED"}
LEASE_S = 120.0  # a live driver's claim on its record, renewed every LEASE_S / 4
LOCATORS = ("name", "run.storage_path")  # config keys that find a record: never a conflict on --resume


class RecordError(UserError, RuntimeError):
    """A run or sweep record cannot be read, or cannot be taken over; the message names it."""


def storage_path_of(cfg: ExperimentConfig) -> str:
    """``run.storage_path`` as given when it is a URI, else an absolute folder (default ``./runs``)."""
    sp = cfg.run.storage_path or "runs"
    if storage.is_uri(sp):
        return sp
    return str(Path(sp).expanduser().resolve())


def timestamped(stem: str) -> str:
    """``<stem>-<YYYYmmdd-HHMMSS>``: the name of a new run or sweep."""
    return f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"


@dataclass(kw_only=True)
class Record:
    """What runs and sweeps share; a subclass names its file and its folder prefix."""

    FILE: ClassVar[str]
    PREFIX: ClassVar[str]  # folder names of this kind start with <experiment name><PREFIX>
    KIND: ClassVar[str]  # "run" or "sweep", in messages

    name: str  # the folder under storage_path: <experiment name><PREFIX><timestamp>, or a trial id
    storage_path: str
    tracking_uri: str
    config: dict[str, Any]  # the validated config, as JSON
    status: str = "running"  # running | finished | failed | stopped
    created: str = ""
    holder: str = ""  # "<host>:<pid>" of the driver that holds the run while it runs
    lease_until: float = 0.0  # time.time() until which the holder's claim stands

    @property
    def folder(self) -> str:
        """``storage_path/name``: a local folder or a URI (``s3://...``)."""
        return storage.join(self.storage_path, self.name)

    @property
    def run_id(self) -> str:
        """The MLflow run this record logs to."""
        raise NotImplementedError

    def experiment(self) -> ExperimentConfig:
        return ExperimentConfig.model_validate(self.config)

    def save(self) -> None:
        """Write the record (atomically on a local folder; an object store replaces it whole)."""
        storage.write_text(storage.join(self.folder, self.FILE), json.dumps(asdict(self), indent=2))

    def mark(self, status: str) -> bool:
        """Set ``status``, save the record and set the MLflow run's status to match; ``False`` when
        MLflow could not be told (the record, which ``--resume`` reads, is saved all the same; a resume
        sets the MLflow status again)."""
        self.status = status
        self.save()
        try:
            tracking.set_status(self.tracking_uri, self.run_id, MLFLOW_STATUS[status])
        except Exception:  # noqa: BLE001 - MLflow unreachable: what failed is reported by the caller
            return False
        return True

    def is_live(self) -> bool:
        """Whether a driver holds this record now: it is running, its lease stands, and its process is
        alive where that can be seen (on this host)."""
        if self.status != "running" or not self.holder or self.lease_until <= time.time():
            return False
        host, _, pid = self.holder.rpartition(":")
        if host != socket.gethostname() or not pid.isdigit():
            return True
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, another user's
            return True
        return True

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """This process holds the record while inside: the lease is taken, renewed in the background
        every ``LEASE_S / 4`` (a storage outage only delays a renewal), and released at the end."""
        lock, stop = threading.Lock(), threading.Event()

        def renew() -> None:
            with lock:
                self.lease_until = time.time() + LEASE_S
                self.save()

        def keep() -> None:
            while not stop.wait(LEASE_S / 4):
                with contextlib.suppress(Exception):
                    renew()

        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        renew()
        thread = threading.Thread(target=keep, name=f"lease-{self.name}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
            with lock, contextlib.suppress(Exception):
                self.holder, self.lease_until = "", 0.0
                self.save()

    @contextlib.contextmanager
    def stopped_by_signals(self, ask_to_stop: Callable[[], bool] | None = None) -> Iterator[threading.Event]:
        """Ctrl-C or SIGTERM (``moco jobs stop``, a scheduler) while inside marks the record and its
        MLflow run stopped (KILLED) at once, as a job's driver may be SIGKILLed seconds later, then
        raises ``KeyboardInterrupt``; ``--resume`` continues the run. With ``ask_to_stop`` (a sweep:
        Tune's own stop, which ends the trials and saves its state), the first signal calls it instead
        and, where it returns True, sets the event yielded and returns: the code inside must raise
        ``KeyboardInterrupt`` once it sees the event; a second signal raises at once. Only in the main
        thread."""
        stopping = threading.Event()
        if threading.current_thread() is not threading.main_thread():
            yield stopping
            return

        def force(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        def on_signal(signum: int, frame: Any) -> None:
            for s in (signal.SIGINT, signal.SIGTERM):  # a second signal does not interrupt the marking
                signal.signal(s, signal.SIG_IGN)
            with contextlib.suppress(Exception):
                self.mark("stopped")
            if ask_to_stop is not None and ask_to_stop():
                stopping.set()
                for s in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(s, force)
                return
            raise KeyboardInterrupt

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield stopping
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def conflicts(self, cfg: ExperimentConfig, overrides: Sequence[str]) -> list[str]:
        """The ``KEY=VALUE`` items of ``overrides`` (``--set``, ``--workers``, ``--gpu``) that ``cfg`` took
        and the recorded config does not share, as ``key=value (recorded: value)``; a resumed run
        continues as recorded, so these would be ignored."""
        given, recorded = flatten(cfg.model_dump(mode="json")), flatten(self.config)
        out = []
        for item in overrides:
            key = item.split("=", 1)[0].strip()
            if key in LOCATORS:
                continue
            keys = [k for k in {*given, *recorded} if k == key or k.startswith(f"{key}.")] or [key]
            for k in sorted(keys):
                if given.get(k) != recorded.get(k):
                    out.append(f"{k}={given.get(k)!r} (recorded: {recorded.get(k)!r})")
        return out

    @classmethod
    def reserve(cls, root: str, stem: str) -> str:
        """A new name ``<stem>-<timestamp>`` (``-2``, ``-3``, ... when taken), reserved by creating its folder
        under ``root``: exclusively on a file system, so concurrent starts never share one; on object
        storage (no exclusive create) a name whose folder exists is skipped."""
        base = timestamped(stem)
        for n in range(1, 1000):
            name = base if n == 1 else f"{base}-{n}"
            if storage.make_dir_exclusive(storage.join(root, name)):
                return name
        raise RecordError(f"no free {cls.KIND} name {base}-N under {root}")

    @classmethod
    def exists(cls, folder: str) -> bool:
        return storage.exists(storage.join(folder, cls.FILE))

    @classmethod
    def load(cls: type[R], folder: str | Path) -> R:
        """The record in ``folder``; an unreadable one (truncated, edited, of another version) is a
        :class:`RecordError` naming the file."""
        path = storage.join(str(folder), cls.FILE)
        try:
            fields = json.loads(storage.read_text(path))
            if not isinstance(fields, dict):
                raise ValueError(f"a JSON {type(fields).__name__}, not an object")
            return cls(**fields)
        except (ValueError, TypeError) as e:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
            raise RecordError(
                f"unreadable {cls.KIND} record {path}: {e}. Restore it from a backup, or move its folder "
                f"away; the other {cls.KIND}s stay resumable"
            ) from None

    @classmethod
    def find(cls: type[R], root: str, name: str) -> R | None:
        """The record named ``name`` under ``root``, or ``None``."""
        folder = storage.join(root, name)
        return cls.load(folder) if cls.exists(folder) else None

    @classmethod
    def latest_unfinished(
        cls: type[R], root: str, experiment: str, say: Callable[[str], None] = print
    ) -> R | None:
        """The most recently created record under ``root`` of experiment ``experiment`` that did not
        finish, or ``None``; an unreadable record is skipped, and ``say`` tells so."""
        candidates = []
        for name in storage.list_dirs(root):
            folder = storage.join(root, name)
            if not name.startswith(f"{experiment}{cls.PREFIX}") or not cls.exists(folder):
                continue
            try:
                rec = cls.load(folder)
            except RecordError as e:
                say(f"warning: skipped: {e}")
                continue
            if rec.status != "finished" and rec.config.get("name") == experiment:
                candidates.append(rec)
        return max(candidates, key=lambda r: r.created, default=None)

    @classmethod
    def to_resume(
        cls: type[R],
        root: str,
        experiment: str,
        resume: bool | str,
        error: type[Exception],
        say: Callable[[str], None] = print,
    ) -> R:
        """What ``--resume`` names: the record called ``resume`` (a string), else the latest unfinished
        one of ``experiment``; ``error(message)`` is raised when there is none, or when a live driver
        holds it."""
        if isinstance(resume, str):
            found = cls.find(root, resume)
            if found is None:
                raise error(f"no {cls.KIND} named {resume!r} under {root}")
        else:
            found = cls.latest_unfinished(root, experiment, say)
            if found is None:
                raise error(
                    f"nothing to resume: no unfinished {cls.KIND} of experiment {experiment!r} under {root}; "
                    f"start a fresh {cls.KIND} without --resume"
                )
        if found.is_live():
            until = datetime.fromtimestamp(found.lease_until).strftime("%H:%M:%S")
            raise error(
                f"{cls.KIND} {found.name} is still running (its driver {found.holder} renews its lease); "
                f"stop it first (Ctrl-C, or moco jobs stop), or, if that driver is gone, resume after {until}"
            )
        return found

    def refuse_conflicts(
        self, cfg: ExperimentConfig, overrides: Sequence[str], error: type[Exception]
    ) -> None:
        """``error`` when ``--resume`` came with overrides the recorded config does not share."""
        if bad := self.conflicts(cfg, overrides):
            raise error(
                f"--resume continues {self.KIND} {self.name} with its recorded config, so these options "
                f"would be ignored: {', '.join(bad)}. Drop them, or start a fresh {self.KIND} "
                "without --resume"
            )


@dataclass(kw_only=True)
class RunRecord(Record):
    """One training run: a Ray Train run (``name``) and its MLflow run."""

    FILE: ClassVar[str] = "moco_run.json"
    PREFIX: ClassVar[str] = "-"
    KIND: ClassVar[str] = "run"

    mlflow_run_id: str
    # once training is over: the checkpoint to publish, the last one, their metrics (a publish that
    # failed is retried from here, with no Ray cluster)
    trained: dict[str, Any] | None = None

    @property
    def run_id(self) -> str:
        return self.mlflow_run_id


@dataclass(kw_only=True)
class SweepRecord(Record):
    """One sweep: a Tune experiment (``name``), its MLflow parent run, and how it ranks trials."""

    FILE: ClassVar[str] = "moco_sweep.json"
    PREFIX: ClassVar[str] = "-tune-"
    KIND: ClassVar[str] = "sweep"
    TRIALS_DIR: ClassVar[str] = "trials"

    parent_run_id: str
    metric: str
    mode: str

    @property
    def run_id(self) -> str:
        return self.parent_run_id

    @property
    def trials_dir(self) -> str:
        """Where each trial's Ray Train run (and its ``moco_run.json``) lives."""
        return storage.join(self.folder, self.TRIALS_DIR)


__all__ = [
    "Record",
    "RecordError",
    "RunRecord",
    "SweepRecord",
    "storage_path_of",
    "timestamped",
    "MLFLOW_STATUS",
    "LEASE_S",
]
