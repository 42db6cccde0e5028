"""The seed dataset format: reading, label kinds, faults, decoding, and the digits writer."""

from __future__ import annotations

import csv
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from moco_core.data import (
    PARTITIONS,
    DataError,
    Fault,
    dataset_fingerprint,
    load_image,
    read_dataset,
    read_partition,
    scoring_fingerprint,
    validate_dataset,
)
from moco_core.digits import write_digits
from moco_core.store import FileImages

# Paths per partition: nested sub-folders on purpose.
FILES = {
    "train": ["a/x0.png", "a/x1.png", "b/c/x2.png", "b/c/x3.png", "x4.png", "x5.png"],
    "val": ["a/v0.png", "b/v1.png", "v2.png"],
    "test": ["t0.png", "c/t1.png", "c/d/t2.png"],
}
BINARY = {"train": [0, 1, 0, 1, 1, 0], "val": [1, 0, 0], "test": [0, 1, 1]}


def _png(path: Path, seed: int = 0, size: tuple[int, int] = (12, 10), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def make_dataset(
    tmp: Path,
    splits_dir: Path | None = None,
    header: list[str] | None = None,
    labels: dict[str, list[list]] | None = None,
) -> Path:
    """A valid dataset in ``tmp/data``: PNGs in nested folders, one CSV per partition.

    ``labels[partition]`` are the label cells of each row (default: one binary ``Pneumonia`` column).
    """
    root = tmp / "data"
    header = header or ["Path", "Pneumonia"]
    labels = labels or {p: [[v] for v in BINARY[p]] for p in PARTITIONS}
    for k, p in enumerate(PARTITIONS):
        for j, f in enumerate(FILES[p]):
            _png(root / p / f, seed=10 * k + j)
        rows = [[f, *labels[p][j]] for j, f in enumerate(FILES[p])]
        _csv((splits_dir or root) / f"{p}.csv", header, rows)
    return root


def _rewrite(csv_path: Path, line: int, cells: list) -> None:
    """Replace CSV line ``line`` (header = 1) by ``cells``."""
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    rows[line - 1] = [str(c) for c in cells]
    _csv(csv_path, rows[0], rows[1:])


def _faults(root: Path, **kw) -> list[Fault]:
    report = validate_dataset(root, **kw)
    assert not report.ok
    return report.faults


# ---------------------------------------------------------------------------------------------
# valid datasets


def test_valid_dataset_reads_and_validates(tmp_path):
    root = make_dataset(tmp_path)
    report = validate_dataset(root)
    assert report.ok, report.format()
    assert report.summary["train"]["images"] == 6
    assert report.summary["train"]["modes"] == {"RGB": 6}
    assert report.summary["train"]["min_size"] == (12, 10)
    assert report.summary["test"]["counts"] == {"Pneumonia": 2}
    assert "OK" in report.format()

    train = read_partition(root, "train")
    assert len(train) == 6
    assert train.rows == [2, 3, 4, 5, 6, 7]
    assert train.paths[2] == (root / "train" / "b/c/x2.png").absolute()
    assert all(p.is_absolute() and p.is_file() for p in train.paths)
    assert train.label_kind == "binary" and train.label_names == ["Pneumonia"]
    assert train.targets.dtype == np.float32 and train.targets.shape == (6, 1)
    assert train.targets[:, 0].tolist() == BINARY["train"]


def test_splits_dir_apart_from_images(tmp_path, monkeypatch):
    splits = tmp_path / "dataset_splits"
    root = make_dataset(tmp_path, splits_dir=splits)
    assert not (root / "train.csv").exists()
    assert validate_dataset(root, splits_dir=splits).ok
    # relative root and splits_dir are relative to the current directory
    monkeypatch.chdir(tmp_path)
    part = read_partition("data", "val", splits_dir="dataset_splits")
    assert part.csv_path == splits / "val.csv"
    assert part.paths[0] == root / "val" / "a/v0.png"
    # without splits_dir the CSVs are looked for in root and are missing
    faults = _faults(root)
    assert len(faults) == 3 and all("not found" in f.message for f in faults)


def test_scoring_fingerprint_tracks_every_partition_and_the_labels(tmp_path):
    """A score (the kNN monitor: train's labels voting for val) compares with another only on the same
    images and labels: any partition's images, or one label, changes the scoring fingerprint."""
    root = make_dataset(tmp_path)
    parts = read_dataset(root, partitions=("train", "val"))
    fp = scoring_fingerprint(parts)
    assert len(fp) == 16 and fp == scoring_fingerprint(read_dataset(root, partitions=("train", "val")))
    assert fp != scoring_fingerprint({"train": parts["train"]})
    relabelled = {**parts, "val": replace(parts["val"], targets=1 - parts["val"].targets)}
    assert scoring_fingerprint(relabelled) != fp  # the same images, other labels
    assert dataset_fingerprint(relabelled["val"]) == dataset_fingerprint(parts["val"])
    _png(root / "val" / FILES["val"][0], seed=99, size=(30, 30))  # a val image changed
    assert scoring_fingerprint(parts) != fp


def test_dataset_fingerprint_tracks_paths_and_sizes(tmp_path):
    root = make_dataset(tmp_path)
    part = read_partition(root, "train")
    fp = dataset_fingerprint(part)
    assert len(fp) == 16 and fp == dataset_fingerprint(read_partition(root, "train"))
    assert fp != dataset_fingerprint(read_partition(root, "val"))
    _png(root / "train" / "x5.png", seed=99, size=(30, 30))  # same name, other size
    assert dataset_fingerprint(part) != fp


# ---------------------------------------------------------------------------------------------
# label kinds


def test_label_kind_multilabel(tmp_path):
    labels = {p: [[1, 1] if j == 0 else [0, j % 2] for j in range(len(FILES[p]))] for p in PARTITIONS}
    root = make_dataset(tmp_path, header=["Path", "Effusion", "Mass"], labels=labels)
    parts = read_dataset(root)
    assert {p.label_kind for p in parts.values()} == {"multilabel"}
    assert parts["train"].targets.shape == (6, 2) and parts["train"].targets.dtype == np.float32
    assert parts["train"].targets[0].tolist() == [1.0, 1.0]
    assert parts["train"].classes == []


def test_label_kind_one_hot_multiclass(tmp_path):
    labels = {p: [[int(j % 3 == c) for c in range(3)] for j in range(len(FILES[p]))] for p in PARTITIONS}
    root = make_dataset(tmp_path, header=["Path", "cat", "dog", "fox"], labels=labels)
    part = read_dataset(root)["train"]
    assert part.label_kind == "multiclass"
    assert part.classes == ["cat", "dog", "fox"]
    assert part.targets.dtype == np.int64 and part.targets.tolist() == [0, 1, 2, 0, 1, 2]


def test_label_kind_single_column_multiclass_ints_sort_numerically(tmp_path):
    values = {"train": [10, 2, 0, 1, 2, 10], "val": [0, 1, 2], "test": [10, 2, 1]}
    root = make_dataset(
        tmp_path, header=["Path", "digit"], labels={p: [[v] for v in values[p]] for p in PARTITIONS}
    )
    parts = read_dataset(root)
    assert parts["train"].label_kind == "multiclass"
    assert parts["train"].classes == ["0", "1", "2", "10"]  # not "10" before "2"
    assert parts["train"].targets.tolist() == [3, 2, 0, 1, 2, 3]
    assert validate_dataset(root).summary["train"]["counts"] == {"0": 1, "1": 1, "2": 2, "10": 2}


def test_label_kind_single_column_strings_share_classes_across_partitions(tmp_path):
    values = {"train": ["dog", "cat", "emu", "dog", "cat", "emu"], "val": ["emu"] * 3, "test": ["cat"] * 3}
    root = make_dataset(
        tmp_path, header=["Path", "animal"], labels={p: [[v] for v in values[p]] for p in PARTITIONS}
    )
    parts = read_dataset(root)
    assert parts["val"].classes == parts["test"].classes == ["cat", "dog", "emu"]
    assert parts["val"].targets.tolist() == [2, 2, 2]  # the same index as in train, decided jointly
    assert parts["test"].targets.tolist() == [0, 0, 0]


def test_label_columns_option_and_no_labels(tmp_path):
    labels = {p: [[v, "note"] for v in BINARY[p]] for p in PARTITIONS}
    root = make_dataset(tmp_path, header=["Path", "Pneumonia", "Comment"], labels=labels)
    part = read_partition(root, "train", label_columns=["Pneumonia"])
    assert part.label_kind == "binary" and part.label_names == ["Pneumonia"]
    none = read_partition(root, "train", label_columns=[])
    assert none.label_kind == "none" and none.targets is None
    with pytest.raises(DataError, match="Effusion"):
        read_partition(root, "train", label_columns=["Effusion"])


# ---------------------------------------------------------------------------------------------
# planted faults: each names partition, CSV line and file


def test_missing_path_column(tmp_path):
    root = make_dataset(tmp_path)
    _rewrite(root / "val.csv", 1, ["File", "Pneumonia"])
    with pytest.raises(DataError) as e:
        read_partition(root, "val")
    (f,) = e.value.faults
    assert (f.partition, f.row) == ("val", 1)
    assert "no 'Path' column" in f.message
    assert "val.csv line 1" in str(e.value)


def test_missing_file(tmp_path):
    root = make_dataset(tmp_path)
    (root / "train" / "b/c/x2.png").unlink()
    (f,) = _faults(root)
    assert str(f) == "train.csv line 4 (train/b/c/x2.png): file not found"
    with pytest.raises(DataError, match=r"train\.csv line 4 \(train/b/c/x2\.png\): file not found"):
        read_partition(root, "train")
    assert read_partition(root, "train", check_files=False).rows[2] == 4


@pytest.mark.parametrize("bad", ["../x0.png", "a/../../x0.png", "/etc/hostname"])
def test_path_outside_partition_folder(tmp_path, bad):
    root = make_dataset(tmp_path)
    _png(root / "x0.png")  # the file exists, but outside train/
    _rewrite(root / "train.csv", 3, [bad, 1])
    (f,) = _faults(root)
    assert (f.partition, f.row, f.file) == ("train", 3, f"train/{bad}")
    assert "outside the partition folder" in f.message or "absolute path" in f.message


def test_label_two_in_binary_column(tmp_path):
    root = make_dataset(tmp_path)
    _rewrite(root / "val.csv", 3, ["b/v1.png", 2])  # 11 of 12 values are 0/1: binary in intent
    (f,) = _faults(root)
    assert (f.partition, f.row, f.file) == ("val", 3, "val/b/v1.png")
    assert "label value 2 in binary column Pneumonia" in f.message
    with pytest.raises(DataError, match="label value 2 in binary column Pneumonia"):
        read_dataset(root)


def test_empty_label_cell(tmp_path):
    root = make_dataset(tmp_path)
    _rewrite(root / "train.csv", 7, ["x5.png", ""])
    (f,) = _faults(root)
    assert str(f) == "train.csv line 7 (train/x5.png): empty label in column Pneumonia"


def test_non_binary_value_with_several_label_columns(tmp_path):
    labels = {p: [[v, 1 - v] for v in BINARY[p]] for p in PARTITIONS}
    root = make_dataset(tmp_path, header=["Path", "Effusion", "Mass"], labels=labels)
    _rewrite(root / "test.csv", 2, ["t0.png", 0, 3])
    (f,) = _faults(root)
    assert (f.partition, f.row, f.file) == ("test", 2, "test/t0.png")
    assert "label value 3 in column Mass" in f.message


def test_corrupt_image_found_only_when_decoding(tmp_path):
    root = make_dataset(tmp_path)
    bad = root / "train" / "a/x1.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    assert validate_dataset(root, decode=False).ok
    (f,) = _faults(root, decode=True)
    assert (f.partition, f.row, f.file) == ("train", 3, "train/a/x1.png")
    assert "cannot decode" in f.message

    part = read_partition(root, "train")  # existence only: fine
    images = FileImages(part, channels=3, size=8)
    pixels, original = images.item(0)
    assert pixels.shape == (3, 8, 8) and original == (10, 12)  # squashed; the original size kept
    with pytest.raises(DataError, match=r"train\.csv line 3 \(train/a/x1\.png\): cannot decode"):
        images.item(1)


def test_empty_csv(tmp_path):
    root = make_dataset(tmp_path)
    _csv(root / "test.csv", ["Path", "Pneumonia"], [])
    (root / "val.csv").write_text("")
    faults = _faults(root)
    by = {f.partition: f for f in faults}
    assert set(by) == {"val", "test"}
    assert "empty" in by["val"].message and "empty" in by["test"].message
    with pytest.raises(DataError, match="test.csv: partition 'test' is empty"):
        read_partition(root, "test")


def test_several_faults_are_all_reported(tmp_path):
    root = make_dataset(tmp_path)
    (root / "train" / "x4.png").unlink()
    _rewrite(root / "train.csv", 2, ["../../secret.png", 0])
    _rewrite(root / "val.csv", 4, ["v2.png", 2])  # 2 in binary column
    bad = root / "test" / "c/t1.png"
    bad.write_bytes(b"not an image at all")
    report = validate_dataset(root)
    got = {(f.partition, f.row, f.file) for f in report.faults}
    assert got == {
        ("train", 2, "train/../../secret.png"),
        ("train", 6, "train/x4.png"),
        ("val", 4, "val/v2.png"),
        ("test", 3, "test/c/t1.png"),
    }
    text = report.format()
    assert "4 problems" in text and text.count("\n") == 4
    with pytest.raises(DataError) as e:  # reading without decoding: the three CSV-level faults
        read_dataset(root)
    assert len(e.value.faults) == 3 and str(e.value).count("\n") == 3


def test_missing_csv_of_one_partition(tmp_path):
    root = make_dataset(tmp_path)
    (root / "test.csv").unlink()
    (f,) = _faults(root)
    assert f.partition == "test" and "test.csv not found" in f.message
    assert validate_dataset(root, partitions=("train", "val")).ok


def test_data_error_survives_pickling(tmp_path):
    err = DataError([Fault("train", 3, "train/a.png", "file not found")], "header")
    back = pickle.loads(pickle.dumps(err))
    assert back.faults == err.faults and str(back) == str(err)


# ---------------------------------------------------------------------------------------------
# decoding


def test_16bit_png_scales_to_full_8bit_range(tmp_path):
    a = np.tile(np.linspace(0, 4095, 64).round().astype(np.uint16), (8, 1))
    a[0, 0], a[0, 1], a[0, 2] = 0, 4095, 2048
    path = tmp_path / "xray.png"
    Image.fromarray(a).save(path)
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I")  # 16-bit gray
    t = load_image(path, channels=1)
    assert t.dtype == torch.uint8 and t.shape == (1, 8, 64)
    assert int(t.min()) == 0 and int(t.max()) == 255
    assert 126 <= int(t[0, 0, 2]) <= 129  # mid value lands mid-range, not clipped to 255
    assert (t == 255).sum() < 16  # only the brightest pixels saturate
    t3 = load_image(path, channels=3)
    assert t3.shape == (3, 8, 64) and torch.equal(t3[0], t3[2])


@pytest.mark.parametrize("channels", [1, 3])
def test_rgba_p_l_decode_to_requested_channels(tmp_path, channels):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 255  # opaque red
    rgba[0, 0, 3] = 0  # one transparent pixel
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "p.png")
    Image.fromarray(np.full((4, 5), 77, np.uint8)).save(tmp_path / "l.png")
    for name in ("rgba.png", "p.png", "l.png"):
        t = load_image(tmp_path / name, channels)
        assert t.shape == (channels, 4, 5) and t.dtype == torch.uint8, name
    rgba_t, p_t, l_t = (load_image(tmp_path / n, channels) for n in ("rgba.png", "p.png", "l.png"))
    if channels == 3:
        assert rgba_t[:, 1, 1].tolist() == [255, 0, 0]
        assert rgba_t[:, 0, 0].tolist() == [255, 255, 255]  # transparent -> white
        assert p_t[:, 1, 1].tolist() == [255, 0, 0]
        assert l_t[:, 2, 2].tolist() == [77, 77, 77]
    else:
        assert int(rgba_t[0, 1, 1]) == 76  # luminance of pure red (0.299 * 255)
        assert int(rgba_t[0, 0, 0]) == 255
        assert int(l_t[0, 2, 2]) == 77


def test_load_image_names_unreadable_file(tmp_path):
    path = tmp_path / "junk.png"
    path.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="junk.png"):
        load_image(path, 3)


# ---------------------------------------------------------------------------------------------
# the digits dataset


def test_write_digits_is_a_valid_dataset(tmp_path):
    out = tmp_path / "digits"
    counts = write_digits(out, image_size=16, seed=0)
    assert sum(counts.values()) == 1797
    assert counts["train"] == pytest.approx(0.6 * 1797, abs=2)
    assert counts["val"] == pytest.approx(0.2 * 1797, abs=2)
    report = validate_dataset(out)
    assert report.ok, report.format()
    train = report.summary["train"]
    assert train["label_kind"] == "multiclass" and train["classes"] == [str(d) for d in range(10)]
    assert train["modes"] == {"L": counts["train"]} and train["max_size"] == (16, 16)
    assert all(c >= 100 for c in train["counts"].values())  # stratified: every digit well represented
    part = read_partition(out, "train")
    assert part.paths[0].parent.name == str(part.classes[part.targets[0]])  # train/<digit>/NNNN.png
    img = load_image(part.paths[0], 1)
    assert img.shape == (1, 16, 16) and int(img.max()) > 200  # real ink, not blank
    # writing again over its own output is fine and gives the same split
    assert write_digits(out, image_size=16, seed=0) == counts


def test_write_digits_refuses_unrelated_folder(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        write_digits(out)
    assert (out / "notes.txt").read_text() == "keep me" and not (out / "train").exists()
