"""The ``moco`` command line: exit codes, messages, help, and progress rendering."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from service.cli import EXIT_FAIL, EXIT_OK, main
from service.progress import ProgressPrinter, format_eta, format_progress

from .conftest import REPO


def test_help_lists_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for cmd in ("quickstart", "data", "pretrain", "tune", "evaluate", "encoders", "submit", "jobs", "config"):
        assert re.search(rf"^\s+{cmd}\s", out, re.M), f"{cmd} missing from moco --help"


def _commands(parser: argparse.ArgumentParser, name: str = "moco"):
    """``(name, parser)`` of ``parser`` and of every command and sub-command below it."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for cmd, sub in action.choices.items():
                yield from _commands(sub, f"{name} {cmd}")


def test_every_help_is_printed_as_written():
    """Every command's ``--help`` renders: no ``%`` escape shown doubled (argparse formats an option's
    help with ``%``, not a description), no unformatted placeholder left."""
    from service.cli import build_parser

    for name, parser in _commands(build_parser()):
        text = parser.format_help()
        for left in ("%%", "%(default)", "%(prog)"):
            assert left not in text, f"{name} --help shows {left!r}:\n{text}"


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
    err = capsys.readouterr().err
    assert err.startswith("error: dataset ") and "Traceback" not in err
    assert "2 problems" in err and first.name in err and second.name in err


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


@pytest.mark.timeout(60)
def test_version_is_the_distribution_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    pyproject = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert pyproject is not None
    assert capsys.readouterr().out.strip() == f"moco {pyproject[1]}" == f"moco {version('moco-service')}"


@pytest.mark.timeout(60)
def test_config_show_prints_the_resolved_config(capsys):
    from moco_core.config import config_from_dict, load_config

    # a shipped recipe by its bare name; digits_tune.yaml extends digits.yaml
    assert main(["config", "show", "digits_tune.yaml", "--set", "optim.epochs=3"]) == EXIT_OK
    out = capsys.readouterr().out
    raw = yaml.safe_load(out)
    assert "base" not in raw and raw["optim"]["epochs"] == 3 and raw["data"]["num_workers"] == 0
    assert raw["model"]["arch"] == "resnet18" and raw["tune"]["space"]["moco"]["queue_size"] == {
        "values": [128, 256]
    }
    expected = load_config(REPO / "experiments" / "digits_tune.yaml", ["optim.epochs=3"])
    assert config_from_dict(raw) == expected  # the output is itself an experiment file


@pytest.mark.timeout(60)
def test_config_show_refuses_what_a_run_would_refuse(tmp_path, capsys):
    assert main(["config", "show", "digits.yaml", "--set", "moco.tempreature=0.2"]) == EXIT_FAIL
    captured = capsys.readouterr()
    assert captured.out == "" and "moco.tempreature: unknown key" in captured.err
    assert main(["config", "show", str(tmp_path / "nope.yaml")]) == EXIT_FAIL
    err = capsys.readouterr().err
    assert "experiment file not found" in err and "digits.yaml" in err  # the shipped recipes are listed


@pytest.mark.timeout(60)
def test_config_schema_to_stdout_and_to_a_file(tmp_path, capsys):
    assert main(["config", "schema"]) == EXIT_OK
    printed = json.loads(capsys.readouterr().out)
    out = tmp_path / "editor" / "moco.schema.json"
    assert main(["config", "schema", "--out", str(out)]) == EXIT_OK
    assert str(out) in capsys.readouterr().err
    assert json.loads(out.read_text()) == printed
    assert printed["properties"]["moco"] == {"$ref": "#/$defs/MocoConfig"}
    assert printed["$defs"]["MocoConfig"]["properties"]["temperature"]["default"] == 0.1


@pytest.mark.timeout(120)
def test_tune_says_how_many_trials_before_the_sweep(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    assert "N repeats the whole grid" in helptext and "--samples 4 on the 12-point grid" in helptext
    assert "starts 48 trials" in helptext
    code = main(
        [
            "tune",
            "digits_tune.yaml",
            "--samples",
            "4",
            "--set",
            f"data.root={tmp_path / 'no-data'}",
            "--set",
            f"run.storage_path={tmp_path / 'runs'}",
        ]
    )
    assert code == EXIT_FAIL  # no dataset: the sweep stops before Ray starts, after the announcement
    err = capsys.readouterr().err
    assert "sweep of 48 trials: the 12-point grid" in err and "repeated 4 times" in err
    assert err.index("sweep of 48 trials") < err.index("error: ")
    assert not (tmp_path / "runs").exists()


# every command that talks to MLflow (moco evaluate adds the option where it is defined)
MLFLOW_COMMANDS = [["quickstart"], ["pretrain", "x.yaml"], ["tune", "x.yaml"], ["encoders", "list"]]
MLFLOW_COMMANDS += [["encoders", "pull", "REF", "--out", "d"], ["submit", "x.yaml"], ["evaluate", "REF"]]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("argv", MLFLOW_COMMANDS, ids=" ".join)
def test_tracking_uri_on_every_mlflow_command(argv):
    from service.cli import build_parser

    args = build_parser().parse_args([*argv, "--tracking-uri", "http://mlflow:5000"])
    assert args.tracking_uri == "http://mlflow:5000"


@pytest.mark.timeout(120)
def test_tracking_uri_beats_the_environment(tmp_path, monkeypatch, capsys):
    from service import tracking

    store = tmp_path / "store"
    store.mkdir()
    tracking.client(f"sqlite:///{store / 'mlflow.db'}").create_registered_model("moco-elsewhere")
    other = f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    monkeypatch.chdir(store)
    assert main(["encoders", "list"]) == EXIT_OK
    assert "no registered encoders: no MLflow store at " + other in capsys.readouterr().out
    # a relative sqlite URI is this directory's store, made absolute
    assert main(["encoders", "list", "--tracking-uri", "sqlite:///mlflow.db"]) == EXIT_OK
    assert capsys.readouterr().out.startswith("moco-elsewhere  aliases: -")
    assert os.environ["MLFLOW_TRACKING_URI"] == other  # the command's setting ends with it
