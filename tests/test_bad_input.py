"""Bad input through the ``moco`` command line: each row is one mistake a user makes. Every one ends the
command with exit 1, an ``error:`` line that names the culprit (the file, the CSV line, the key) and no
traceback, before Ray starts (no cluster, no training: the module runs in seconds)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from PIL import Image

from service.cli import EXIT_FAIL, main

from .conftest import REPO

DIGITS = str(REPO / "experiments" / "digits.yaml")
DIGITS_TUNE = str(REPO / "experiments" / "digits_tune.yaml")
NUL_PATH = b"Path,label\n0.png,0\na\x00b.png,1\n"  # line 3
LONG_NAME = b"Path,label\n0.png,0\n1.png,1\nsub/" + b"x" * 300 + b".png,0\n"  # line 4: a 304-byte name
NA_AND_EMPTY = b"Path,label\n0.png,0\n1.png,1\n2.png,NA\n3.png,\n"  # lines 4 and 5
TWO_LABELS = b"Path,label\n0.png,0\n1.png,1\n2.png,0\n./0.png,1\n"  # line 5 is line 2's image
MISSING = b"Path,label\n0.png,0\n1.png,1\nnope.png,0\n2.png,NA\n"  # lines 4 and 5


def tiny_dataset(tmp: Path, train_csv: bytes | None = None, images: int = 4) -> Path:
    """``tmp/data``: ``images`` 8x8 PNGs per partition and CSVs ``Path,label`` (binary); ``train_csv``
    replaces train.csv (its rows may name files that do not exist)."""
    root = tmp / "data"
    for part in ("train", "val", "test"):
        (root / part).mkdir(parents=True)
        lines = ["Path,label"]
        for i in range(images):
            Image.new("L", (8, 8), 40 * i).save(root / part / f"{i}.png")
            lines.append(f"{i}.png,{i % 2}")
        (root / f"{part}.csv").write_text("\n".join(lines) + "\n")
    if train_csv is not None:
        (root / "train.csv").write_bytes(train_csv)
    return root


def run_files(tmp: Path) -> list[str]:
    """Where a run that got as far as starting would leave its records and its MLflow store."""
    return [
        "--set",
        f"run.storage_path={tmp / 'runs'}",
        "--set",
        f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
    ]


def pickled_model(tmp: Path) -> Path:
    """A whole module saved with ``torch.save`` (what ``weights_only=True`` refuses to unpickle)."""
    torch.save(torch.nn.Linear(2, 2), tmp / "model.pt")
    return tmp / "model.pt"


def experiment_file(tmp: Path, text: bytes) -> str:
    path = tmp / "exp.yaml"
    path.write_bytes(text)
    return str(path)


@dataclass
class Row:
    argv: Callable[[Path], list[str]]  # the command line, given the test's tmp_path
    says: Callable[[Path], list[str]]  # what the error names (all of it must be there)
    env: dict[str, str] = field(default_factory=dict)


ROWS = {
    "yaml not utf-8": Row(
        lambda t: ["config", "show", experiment_file(t, b"name: caf\xe9\n")],
        lambda t: [str(t / "exp.yaml"), "not UTF-8", "line 1"],
    ),
    "yaml duplicate key": Row(
        lambda t: [
            "pretrain",
            experiment_file(t, b"optim:\n  lr: 0.5\nname: dup\noptim:\n  epochs: 3\n"),
            *run_files(t),
        ],
        lambda t: [str(t / "exp.yaml"), "line 4", "'optim'", "first at line 1"],
    ),
    "temperature inf": Row(
        lambda t: ["pretrain", DIGITS, "--set", "moco.temperature=.inf", *run_files(t)],
        lambda t: ["moco.temperature", "finite"],
    ),
    "any float nan": Row(
        lambda t: ["pretrain", DIGITS, "--set", "optim.weight_decay=.nan", *run_files(t)],
        lambda t: ["optim.weight_decay", "finite"],
    ),
    "temperature zero": Row(
        lambda t: ["pretrain", DIGITS, "--set", "moco.temperature=0", *run_files(t)],
        lambda t: ["moco.temperature", "greater than 0"],
    ),
    "name of 300 characters": Row(
        lambda t: ["pretrain", DIGITS, "--set", "name=" + "a" * 300, *run_files(t)],
        lambda t: ["name: 300 characters, at most 100"],
    ),
    "name with a slash": Row(
        lambda t: ["config", "show", DIGITS, "--set", "name=a/b"],
        lambda t: ["name: 'a/b'", "letters, digits"],
    ),
    "csv path with a NUL byte": Row(
        lambda t: ["data", "validate", str(tiny_dataset(t, NUL_PATH))],
        lambda t: ["train.csv line 3", "NUL byte", str(t / "data")],
    ),
    "csv path with a NUL byte, pretrain": Row(
        lambda t: ["pretrain", DIGITS, "--set", f"data.root={tiny_dataset(t, NUL_PATH)}", *run_files(t)],
        lambda t: ["train.csv line 3", "NUL byte"],
    ),
    "csv name over 255 bytes": Row(
        lambda t: ["data", "validate", str(tiny_dataset(t, LONG_NAME))],
        lambda t: ["train.csv line 4", "304 bytes", "at most 255"],
    ),
    "csv name over 255 bytes, pretrain": Row(
        lambda t: ["pretrain", DIGITS, "--set", f"data.root={tiny_dataset(t, LONG_NAME)}", *run_files(t)],
        lambda t: ["train.csv line 4", "304 bytes"],
    ),
    "binary label NA and empty": Row(
        lambda t: ["data", "validate", str(tiny_dataset(t, NA_AND_EMPTY))],
        lambda t: [
            "train.csv line 4 (train/2.png): missing label 'NA' in column label",
            "train.csv line 5 (train/3.png): empty label in column label",
        ],
    ),
    "one image, two labels": Row(
        lambda t: ["data", "validate", str(tiny_dataset(t, TWO_LABELS))],
        lambda t: ["train.csv line 5 (train/./0.png): line 2 (train/0.png) lists the same image", "label=0"],
    ),
    "submit to a port out of range": Row(
        lambda t: ["submit", DIGITS, "--address", "http://h:99999"],
        lambda t: ["--address='http://h:99999'", "'99999' is not a port"],
    ),
    "digits smaller than the recipes take": Row(
        lambda t: ["data", "digits", str(t / "digits"), "--image-size", "4"],
        lambda t: ["--image-size must be between 8 and 1024, not 4"],
    ),
    "evaluate --out a folder": Row(
        lambda t: ["evaluate", "models:/moco-x@champion", "--data", str(t), "--out", str(_folder(t))],
        lambda t: [f"--out {t / 'results'} is a folder"],
    ),
    "evaluate --out someone's file": Row(
        lambda t: ["evaluate", "models:/moco-x@champion", "--data", str(t), "--out", str(_notes(t))],
        lambda t: [f"--out {t / 'notes.json'} exists and is not a report of moco evaluate"],
    ),
    "tracking.uri host:port": Row(
        lambda t: [
            "pretrain",
            DIGITS,
            "--set",
            "tracking.uri=localhost:5000",
            "--set",
            f"run.storage_path={t}/runs",
        ],
        lambda t: ["tracking.uri", "did you mean http://localhost:5000"],
    ),
    "--tracking-uri host:port": Row(
        lambda t: ["encoders", "list", "--tracking-uri", "localhost:5000"],
        lambda t: ["--tracking-uri 'localhost:5000'", "did you mean http://localhost:5000"],
    ),
    "MLFLOW_TRACKING_URI host:port": Row(
        lambda t: ["encoders", "list"],
        lambda t: ["MLFLOW_TRACKING_URI 'mlflow.internal:5000'", "did you mean http://mlflow.internal:5000"],
        env={"MLFLOW_TRACKING_URI": "mlflow.internal:5000"},
    ),
    "a password in tracking.uri": Row(
        lambda t: [
            "pretrain",
            DIGITS,
            "--set",
            "tracking.uri=http://bob:s3cret@mlflow.internal:5000",
            "--set",
            f"run.storage_path={t}/runs",
        ],
        lambda t: ["tracking.uri", "holds a user or password", "MLFLOW_TRACKING_PASSWORD"],
    ),
    "a password in --tracking-uri": Row(
        lambda t: ["encoders", "list", "--tracking-uri", "postgresql://mlflow:s3cret@db:5432/mlflow"],
        lambda t: ["--tracking-uri", "postgresql://db:5432", "PGPASSWORD"],
    ),
    "a partition smaller than one batch": Row(
        lambda t: ["tune", DIGITS_TUNE, "--set", f"data.root={tiny_dataset(t)}", *run_files(t)],
        lambda t: ["partition 'train'", str(t / "data" / "train.csv"), "has 4 images", "one batch of 64"],
    ),
    "a memory bank smaller than K": Row(
        lambda t: [
            "pretrain",
            DIGITS,
            *("--set", "moco.mechanism=memory_bank", "--set", "optim.batch_size=2"),
            *("--set", f"data.root={tiny_dataset(t)}", *run_files(t)),
        ],
        lambda t: ["moco.mechanism=memory_bank", "moco.queue_size=256", "the 4 images of partition 'train'"],
    ),
    "a sweep's trial whose bank is smaller than K": Row(
        lambda t: [
            "tune",
            DIGITS_TUNE,
            *("--set", "tune.space={moco: {mechanism: [moco, memory_bank], negatives: [2, 2048]}}"),
            *("--set", "optim.batch_size=4", "--set", f"data.root={tiny_dataset(t)}", *run_files(t)),
        ],
        lambda t: [
            "the trial moco.mechanism=memory_bank, moco.negatives=2048",
            "lower moco.queue_size below",
        ],
    ),
    "prepare: a missing file and a missing label": Row(
        lambda t: ["data", "prepare", str(tiny_dataset(t, MISSING)), "--out", str(t / "runs" / "store")],
        lambda t: [
            "train.csv line 4 (train/nope.png): file not found",
            "train.csv line 5 (train/2.png): missing label 'NA'",
        ],
    ),
    "evaluate --prepare without --store": Row(
        lambda t: ["evaluate", "models:/m@a", "--data", str(tiny_dataset(t)), "--prepare"],
        lambda t: ["--prepare makes --store from --data: give both"],
    ),
    "prepare: a path with a NUL byte": Row(
        lambda t: ["data", "prepare", str(tiny_dataset(t, NUL_PATH)), "--out", str(t / "runs" / "store")],
        lambda t: ["train.csv line 3", "NUL byte"],
    ),
    "an unknown timm model": Row(
        lambda t: ["pretrain", DIGITS, "--set", "model.arch=timm:densenet12", *run_files(t)],
        lambda t: ["unknown timm model 'densenet12'", "close matches: timm:densenet121"],
    ),
    "a ViT on images that are not whole patches": Row(
        lambda t: [
            "pretrain",
            DIGITS,
            *("--set", "model.arch=timm:vit_small_patch16_224", "--set", "data.image_size=20"),
            *("--set", f"data.root={tiny_dataset(t)}", "--set", "optim.batch_size=4", *run_files(t)),
        ],
        lambda t: ["model.arch=timm:vit_small_patch16_224 with data.image_size=20", "multiple of 16"],
    ),
    "end_to_end with one image per worker": Row(
        lambda t: [
            "pretrain",
            DIGITS,
            *("--set", "moco.mechanism=end_to_end", "--set", "moco.shuffle_bn=off"),
            *("--set", "optim.batch_size=2", "--set", "scaling.workers=2", *run_files(t)),
        ],
        lambda t: ["each worker needs >= 2 images", "moco.mechanism=end_to_end"],
    ),
    "model.init: a pickled model, not a state_dict": Row(
        lambda t: [
            "pretrain",
            DIGITS,
            *("--set", f"model.init={pickled_model(t)}", "--set", "optim.batch_size=4"),
            *("--set", "eval.knn_label_fraction=1.0"),
            *("--set", f"data.root={tiny_dataset(t)}", *run_files(t)),
        ],
        lambda t: ["model.init", str(t / "model.pt"), "holds pickled objects", "weights_only=True"],
    ),
    "end_to_end with split BN": Row(
        lambda t: [
            "pretrain",
            DIGITS,
            "--set",
            "moco.mechanism=end_to_end",
            "--set",
            "moco.shuffle_bn=split",
        ],
        lambda t: ["moco.shuffle_bn=split", "moco.mechanism=end_to_end has no key encoder"],
    ),
}


def _folder(tmp: Path) -> Path:
    (tmp / "results").mkdir()
    (tmp / "results" / "old.json").write_text("{}")
    return tmp / "results"


def _notes(tmp: Path) -> Path:
    (tmp / "notes.json").write_text(json.dumps({"mine": True}))
    return tmp / "notes.json"


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_bad_input_is_one_error_line(row: Row, tmp_path, capsys, monkeypatch):
    for k, v in row.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)  # a command that wrongly went on would leave mlflow.db, runs/ here
    argv = row.argv(tmp_path)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == EXIT_FAIL, err
    assert "Traceback" not in err and "s3cret" not in err  # a password given is never repeated
    errors = [i for i, line in enumerate(err.splitlines()) if line.startswith("error: ")]
    assert len(errors) == 1, err
    message = "\n".join(err.splitlines()[errors[0] :])
    for part in row.says(tmp_path):
        assert part in message, f"{part!r} not in:\n{message}"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "digits").exists()


def test_an_earlier_report_is_no_reason_to_refuse(tmp_path):
    """What ``--out`` refuses, and what it does not: the report of an earlier evaluation is replaced."""
    from service.evaluation.report import check_out

    report = tmp_path / "evaluation.json"
    report.write_text(json.dumps({"encoder": {}, "data": {}, "settings": {}, "results": []}))
    check_out(report)
    (tmp_path / "empty.json").write_text("")
    check_out(tmp_path / "empty.json")
    check_out(tmp_path / "new" / "evaluation.json")
