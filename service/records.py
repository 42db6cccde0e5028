"""The record of a run or a sweep: what ``--resume`` needs to continue it, beside its checkpoints.

A training run keeps ``moco_run.json`` in ``run.storage_path/<name>/`` (beside Ray Train's checkpoints)
and a sweep keeps ``moco_sweep.json`` in its Tune experiment folder; both may live on object storage
(:mod:`service.storage`). A record holds the validated config, the tracking URI and the MLflow run it
logs to, and a status; :meth:`Record.mark` is the one place that changes the status, saves the record
and tells MLflow.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from moco_core.config import ExperimentConfig

from . import storage, tracking

R = TypeVar("R", bound="Record")

MLFLOW_STATUS = {"running": "RUNNING", "finished": "FINISHED", "failed": "FAILED", "stopped": "KILLED"}


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

    def mark(self, status: str) -> None:
        """Set ``status``, save the record and set the MLflow run's status to match."""
        self.status = status
        self.save()
        tracking.set_status(self.tracking_uri, self.run_id, MLFLOW_STATUS[status])

    @classmethod
    def exists(cls, folder: str) -> bool:
        return storage.exists(storage.join(folder, cls.FILE))

    @classmethod
    def load(cls: type[R], folder: str | Path) -> R:
        return cls(**json.loads(storage.read_text(storage.join(str(folder), cls.FILE))))

    @classmethod
    def find(cls: type[R], root: str, name: str) -> R | None:
        """The record named ``name`` under ``root``, or ``None``."""
        folder = storage.join(root, name)
        return cls.load(folder) if cls.exists(folder) else None

    @classmethod
    def latest_unfinished(cls: type[R], root: str, experiment: str) -> R | None:
        """The most recently created record under ``root`` of experiment ``experiment`` that did not
        finish, or ``None``."""
        candidates = []
        for name in storage.list_dirs(root):
            folder = storage.join(root, name)
            if not name.startswith(f"{experiment}{cls.PREFIX}") or not cls.exists(folder):
                continue
            rec = cls.load(folder)
            if rec.status != "finished" and rec.config.get("name") == experiment:
                candidates.append(rec)
        return max(candidates, key=lambda r: r.created, default=None)

    @classmethod
    def to_resume(cls: type[R], root: str, experiment: str, resume: bool | str, error: type[Exception]) -> R:
        """What ``--resume`` names: the record called ``resume`` (a string), else the latest unfinished
        one of ``experiment``; ``error(message)`` is raised when there is none."""
        if isinstance(resume, str):
            found = cls.find(root, resume)
            if found is None:
                raise error(f"no {cls.KIND} named {resume!r} under {root}")
            return found
        found = cls.latest_unfinished(root, experiment)
        if found is None:
            raise error(
                f"nothing to resume: no unfinished {cls.KIND} of experiment {experiment!r} under {root}; "
                f"start a fresh {cls.KIND} without --resume"
            )
        return found


@dataclass(kw_only=True)
class RunRecord(Record):
    """One training run: a Ray Train run (``name``) and its MLflow run."""

    FILE: ClassVar[str] = "moco_run.json"
    PREFIX: ClassVar[str] = "-"
    KIND: ClassVar[str] = "run"

    mlflow_run_id: str

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


__all__ = ["Record", "RunRecord", "SweepRecord", "storage_path_of", "timestamped", "MLFLOW_STATUS"]
