"""The ``moco`` command line: exit codes, messages, help, and progress rendering."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest

from service.cli import EXIT_FAIL, EXIT_OK, main
from service.progress import ProgressPrinter, format_eta, format_progress

from .conftest import REPO


def test_help_lists_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for cmd in ("quickstart", "data", "pretrain", "tune", "evaluate", "encoders", "submit", "jobs"):
        assert re.search(rf"^\s+{cmd}\s", out, re.M), f"{cmd} missing from moco --help"


def test_data_digits_then_validate_ok(tmp_path, capsys):
    root = tmp_path / "digits"
    assert main(["data", "digits", str(root), "--image-size", "16"]) == EXIT_OK
    assert "train 1078" in capsys.readouterr().out
    assert main(["data", "validate", str(root)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "OK" in out and "multiclass" in out


def test_validate_lists_every_fault_and_exits_1(tmp_path, capsys):
    root = tmp_path / "digits"
    main(["data", "digits", str(root), "--image-size", "8"])
    first, second = sorted((root / "train").rglob("*.png"))[:2]
    first.unlink()
    second.write_bytes(b"not a png")
    capsys.readouterr()
    assert main(["data", "validate", str(root)]) == EXIT_FAIL
    out = capsys.readouterr().out
    assert "2 problems" in out and first.name in out and second.name in out


def test_pretrain_config_error_exits_1_before_ray(tmp_path, capsys):
    code = main(
        [
            "pretrain",
            str(REPO / "experiments" / "digits.yaml"),
            "--set",
            "moco.momentum=1.5",
            "--set",
            f"run.storage_path={tmp_path / 'runs'}",
        ]
    )
    assert code == EXIT_FAIL
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "moco.momentum" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_pretrain_unknown_key_and_missing_file(tmp_path, capsys):
    assert (
        main(["pretrain", str(REPO / "experiments" / "digits.yaml"), "--set", "moco.tempreature=0.2"])
        == EXIT_FAIL
    )
    assert "moco.tempreature: unknown key" in capsys.readouterr().err
    assert main(["pretrain", str(tmp_path / "nope.yaml")]) == EXIT_FAIL
    assert "experiment file not found" in capsys.readouterr().err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _record(step: int, kind: str = "step") -> dict:
    return {
        "epoch": 0,
        "epochs": 2,
        "step": step,
        "total_steps": 10,
        "train/loss": 5.25,
        "train/images_per_s": 312.4,
        "eta_s": 130,
        "kind": kind,
    }


def test_progress_is_one_live_line_on_a_terminal():
    term = _Terminal()
    p = ProgressPrinter(term)
    p.show(_record(1))
    p.show(_record(2))
    p.message("done")
    text = term.getvalue()
    assert text.count("\r\033[K") == 2 and text.endswith("\ndone\n")
    assert "epoch 1/2  step 2/10  loss 5.250  312 img/s  ETA 2m10s" in text


def test_progress_in_a_log_is_plain_and_throttled():
    log = io.StringIO()
    p = ProgressPrinter(log, every_s=3600)
    p.show(_record(1))  # the first line is written
    p.show(_record(2))  # throttled
    p.show(_record(5, kind="epoch"))  # epoch summaries always are
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in log.getvalue() and "step 5/10" in lines[1]


@pytest.mark.parametrize("seconds, text", [(0, "0m00s"), (59.9, "0m59s"), (3725, "1h02m"), (-3, "0m00s")])
def test_format_eta(seconds, text):
    assert format_eta(seconds) == text


def test_format_progress_shows_knn():
    assert "knn_top1 0.912" in format_progress({**_record(3), "eval/knn_top1": 0.9123})
