"""Run and sweep records under faults and races: unique names reserved exclusively, an unreadable record
named (the others stay resumable), a live run's lease refused by ``--resume``, overrides a resumed run
would ignore refused; and ``--code upload`` ships Python sources only. All before Ray starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from moco_core.config import load_config
from service import records
from service.cli import EXIT_FAIL, main
from service.jobs.submit import package, python_sources
from service.records import RecordError, RunRecord, SweepRecord

from .conftest import REPO

EXPERIMENT = REPO / "experiments" / "digits.yaml"


def a_record(root: Path, name: str, *, status: str = "failed", created: str | None = None) -> RunRecord:
    cfg = load_config(EXPERIMENT, [f"run.storage_path={root}", "data.root=/nowhere"])
    rec = RunRecord(
        name=name,
        storage_path=str(root),
        mlflow_run_id="0" * 32,
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        config=cfg.model_dump(mode="json"),
        status=status,
        created=created or datetime.now().isoformat(),
    )
    rec.save()
    return rec


def resume_cli(root: Path, *extra: str) -> list[str]:
    return ["pretrain", str(EXPERIMENT), "--set", f"run.storage_path={root}", *extra]


def test_names_started_in_one_second_are_unique_and_their_folders_exclusive(tmp_path):
    names: list[str] = []
    start = threading.Barrier(8)

    def take() -> None:
        start.wait()
        names.append(RunRecord.reserve(str(tmp_path), "digits"))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(names) == 8 and len(set(names)) == 8, names
    assert all((tmp_path / n).is_dir() and n.startswith("digits-") for n in names)
    # a sweep's name is reserved the same way, beside the runs
    assert SweepRecord.reserve(str(tmp_path), "digits-tune").startswith("digits-tune-")


def test_an_unreadable_record_is_named_and_the_others_stay_resumable(tmp_path, capsys):
    good = a_record(tmp_path, "digits-20260101-000000", created="2026-01-01T00:00:00")
    bad = a_record(tmp_path, "digits-20260102-000000", created="2026-01-02T00:00:00")
    path = tmp_path / bad.name / RunRecord.FILE
    path.write_text(path.read_text()[:57])  # truncated mid-write
    said: list[str] = []
    found = RunRecord.to_resume(str(tmp_path), "digits", True, RuntimeError, said.append)
    assert found.name == good.name
    assert len(said) == 1 and str(path) in said[0] and said[0].startswith("warning: skipped: unreadable")
    with pytest.raises(RecordError, match="unreadable run record"):
        RunRecord.find(str(tmp_path), bad.name)
    (tmp_path / good.name / RunRecord.FILE).write_text("[1, 2]")  # valid JSON, not a record
    with pytest.raises(RecordError, match="not an object"):
        RunRecord.load(tmp_path / good.name)

    capsys.readouterr()
    assert main(resume_cli(tmp_path, "--resume", bad.name)) == EXIT_FAIL
    err = capsys.readouterr().err
    assert err.startswith(f"error: unreadable run record {path}") and "Traceback" not in err, err


def test_resume_refuses_a_run_whose_driver_holds_it(tmp_path, capsys):
    rec = a_record(tmp_path, "digits-20260101-000000", status="running")
    assert not rec.is_live()  # running, but no lease: its driver died before leases existed
    with rec.held():
        on_disk = RunRecord.load(tmp_path / rec.name)
        assert on_disk.is_live() and on_disk.holder.endswith(f":{__import__('os').getpid()}")
        capsys.readouterr()
        assert main(resume_cli(tmp_path, "--resume")) == EXIT_FAIL
        err = capsys.readouterr().err
        assert f"run {rec.name} is still running" in err and "Traceback" not in err, err
    released = RunRecord.load(tmp_path / rec.name)
    assert released.holder == "" and not released.is_live()


def test_a_lease_is_renewed_while_held_and_a_dead_holder_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "LEASE_S", 0.4)
    rec = a_record(tmp_path, "digits-20260101-000000", status="running")
    with rec.held():
        first = RunRecord.load(tmp_path / rec.name).lease_until
        time.sleep(0.5)
        assert RunRecord.load(tmp_path / rec.name).lease_until > first  # renewed in the background
    # a holder on this host whose process is gone: resumable at once, before its lease runs out
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host = __import__("socket").gethostname()
    rec.holder, rec.lease_until = f"{host}:{dead.stdout.strip()}", time.time() + 600
    rec.save()
    assert not RunRecord.load(tmp_path / rec.name).is_live()
    # a holder on another host: live until its lease expires
    rec.holder = "another-host:1"
    assert rec.is_live()
    rec.lease_until = time.time() - 1
    assert not rec.is_live()


def test_resume_refuses_overrides_it_would_ignore(tmp_path, capsys):
    rec = a_record(tmp_path, "digits-20260101-000000")
    recorded_lr = rec.config["optim"]["lr"]
    cfg = load_config(
        EXPERIMENT, [f"run.storage_path={tmp_path}", "data.root=/nowhere", f"optim.lr={recorded_lr}"]
    )
    assert rec.conflicts(cfg, [f"optim.lr={recorded_lr}", f"run.storage_path={tmp_path}"]) == []
    capsys.readouterr()
    code = main(
        resume_cli(
            tmp_path, "--set", "data.root=/nowhere", "--set", "optim.lr=0.5", "--workers", "2", "--resume"
        )
    )
    assert code == EXIT_FAIL
    err = capsys.readouterr().err
    assert f"--resume continues run {rec.name}" in err and "Traceback" not in err, err
    assert f"optim.lr=0.5 (recorded: {recorded_lr!r})" in err and "scaling.workers=2 (recorded: 1)" in err, (
        err
    )
    assert "data.root" not in err  # the same value as recorded


def test_a_sweep_is_resumed_only_from_state_this_user_owns(tmp_path, capsys):
    """Ray Tune unpickles a sweep's state on resume: a folder anyone may write, or another user's, is
    refused before Ray starts."""
    tune_yaml = REPO / "experiments" / "digits_tune.yaml"
    cfg = load_config(tune_yaml, [f"run.storage_path={tmp_path}", "data.root=/nowhere"])
    rec = SweepRecord(
        name="digits-tune-20260101-000000",
        storage_path=str(tmp_path),
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        config=cfg.model_dump(mode="json"),
        status="failed",
        parent_run_id="0" * 32,
        metric="eval/knn_top1",
        mode="max",
    )
    rec.save()
    state = tmp_path / rec.name / "tuner.pkl"
    state.write_bytes(b"not for unpickling")
    args = ["tune", str(tune_yaml), "--set", f"run.storage_path={tmp_path}", "--resume"]

    state.chmod(0o666)
    capsys.readouterr()
    assert main(args) == EXIT_FAIL
    err = capsys.readouterr().err
    assert f"refusing to resume from {state}: anyone may write it" in err and "Traceback" not in err, err
    state.chmod(0o644)
    if os.geteuid() != 0:
        return  # giving a file to another user needs root
    os.chown(state, 65534, -1)
    assert main(args) == EXIT_FAIL
    assert f"refusing to resume from {state}: it belongs to uid 65534" in capsys.readouterr().err


def test_code_upload_ships_python_sources_only(tmp_path):
    pkg = tmp_path / "src" / "pkg"
    (pkg / "sub" / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "mod.py").write_text("X = 1\n")
    (pkg / ".env").write_text("AWS_SECRET_ACCESS_KEY=leaked\n")
    (pkg / "sub" / "data.csv").write_text("Path\n")
    (pkg / "sub" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    copy = Path(python_sources(pkg, tmp_path / "code" / "pkg"))
    shipped = sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file())
    assert shipped == ["__init__.py", "sub/mod.py"]

    cfg = load_config(EXPERIMENT, ["data.root=/data/digits", "run.storage_path=s3://b/runs"])
    entry, env = package(
        cfg,
        tmp_path / "job" / "job",
        tune=False,
        code="upload",
        tracking_uri="http://mlflow:5000",
        resume="",
        overrides=["optim.lr=0.1"],
    )
    assert entry.endswith("--resume --set optim.lr=0.1")  # the job refuses it against the record
    for module in env["py_modules"]:
        files = [p for p in Path(module).rglob("*") if p.is_file()]
        assert files and all(p.suffix == ".py" for p in files), module
    assert json.dumps(env).count(str(REPO)) == 0  # nothing is shipped from the source tree itself


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs, filled up; skipped where it cannot be mounted (not root, no CAP_SYS_ADMIN)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.decode().strip() or out.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def fill(folder: Path) -> None:
    """Write until the disk is full (ENOSPC)."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def test_a_full_disk_keeps_the_record_whole_and_is_one_line(full_disk, tmp_path, capsys):
    rec = a_record(full_disk, "digits-20260101-000000")
    before = (full_disk / rec.name / RunRecord.FILE).read_text()
    fill(full_disk)
    rec.status = "running"
    rec.config["optim"]["lr"] = 0.5  # a record as large again: it cannot be written now
    with pytest.raises(records.storage.StorageError, match="No space left on device"):
        rec.save()
    assert (full_disk / rec.name / RunRecord.FILE).read_text() == before  # the old record, whole
    assert RunRecord.load(full_disk / rec.name).status == "failed"
    assert not [p for p in (full_disk / rec.name).iterdir() if p.name != RunRecord.FILE]  # no temp left

    # a new run on the full disk: one line, before Ray starts
    capsys.readouterr()
    digits = tmp_path / "digits"
    assert main(["data", "digits", str(digits), "--image-size", "8"]) == 0
    capsys.readouterr()
    code = main(
        [
            "pretrain",
            str(EXPERIMENT),
            "--set",
            f"data.root={digits}",
            "--set",
            f"run.storage_path={full_disk}",
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
        ]
    )
    err = capsys.readouterr().err
    assert code == EXIT_FAIL and "No space left on device" in err and "Traceback" not in err, err
