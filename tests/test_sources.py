"""Where our users' images are. DICOM as hospitals hand it over: the rescale, the window, MONOCHROME1, 12
and 16 bits, decoded to the pixels a PNG of the expected array gives; bad files named; validate and
prepare read DICOM. A folder tree without CSVs: `moco data index`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moco_core.data import DataError, load_image, read_dataset, validate_dataset
from moco_core.store import prepare_here

pydicom = pytest.importorskip("pydicom")


def write_dicom(path: Path, a: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 16, **extra) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = extra.pop("syntax", ExplicitVRLittleEndian)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = a.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelData = a.astype(np.uint16).tobytes()
    for key, value in extra.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _png(path: Path, a: np.ndarray) -> Path:
    Image.fromarray(a.astype(np.uint16)).save(path)
    return path


@pytest.fixture
def values():
    rng = np.random.default_rng(0)
    return (np.linspace(0, 4000, 48 * 40).reshape(48, 40) + rng.integers(0, 90, (48, 40))).astype(np.int64)


def test_monochrome2_16_and_12_bits_decode_as_a_png_of_the_same_values(tmp_path, values):
    png = load_image(_png(tmp_path / "v.png", values), 1)
    for bits in (16, 12):
        dcm = load_image(write_dicom(tmp_path / f"v{bits}.dcm", values, bits=bits), 1)
        assert dcm.shape == (1, 48, 40)
        assert np.abs(dcm.numpy().astype(int) - png.numpy().astype(int)).max() <= 1


def test_rescale_then_window_as_a_viewer_shows_it(tmp_path, values):
    slope, intercept, centre, width = 2.0, -1024.0, 2000.0, 3001.0
    dcm = write_dicom(
        tmp_path / "w.dcm",
        values,
        RescaleSlope=slope,
        RescaleIntercept=intercept,
        WindowCenter=centre,
        WindowWidth=width,
    )
    hu = values * slope + intercept
    lo, hi = centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2  # DICOM's linear window
    expected = np.clip(hu, lo, hi) - lo  # what the window keeps, as a PNG of those values gives it
    got, want = load_image(dcm, 1).numpy().astype(int), load_image(_png(tmp_path / "e.png", expected), 1)
    assert np.abs(got - want.numpy().astype(int)).max() <= 1
    unwindowed = load_image(write_dicom(tmp_path / "n.dcm", values, RescaleSlope=slope), 1)
    assert np.abs(unwindowed.numpy().astype(int) - got).max() > 20  # the window did something


def test_monochrome1_is_inverted(tmp_path, values):
    mono2 = load_image(write_dicom(tmp_path / "m2.dcm", values), 1).numpy().astype(int)
    mono1 = load_image(write_dicom(tmp_path / "m1.dcm", values, "MONOCHROME1"), 1).numpy().astype(int)
    assert np.abs(mono1 - (255 - mono2)).max() <= 1


def test_bad_dicom_files_are_named_with_what_is_wrong(tmp_path, values):
    from pydicom.uid import JPEG2000

    ok = write_dicom(tmp_path / "ok.dcm", values)
    no_pixels = pydicom.dcmread(ok)
    del no_pixels.PixelData
    no_pixels.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(DataError, match=r"nopix\.dcm.*without pixel data"):
        load_image(tmp_path / "nopix.dcm", 1)
    write_dicom(tmp_path / "pal.dcm", values, "PALETTE COLOR")
    with pytest.raises(DataError, match="photometric interpretation PALETTE COLOR is not handled"):
        load_image(tmp_path / "pal.dcm", 1)
    bad = pydicom.dcmread(ok)
    bad.file_meta.TransferSyntaxUID = JPEG2000  # declared compressed, holds raw bytes
    bad.PixelData = pydicom.encaps.encapsulate([b"\0" * 64])
    bad.save_as(tmp_path / "j2k.dcm")
    with pytest.raises(DataError, match=r"transfer syntax JPEG 2000.*1\.2\.840\.10008\.1\.2\.4\.91"):
        load_image(tmp_path / "j2k.dcm", 1)


def test_validate_and_prepare_read_a_dicom_dataset_and_name_a_bad_file(tmp_path, values):
    root = tmp_path / "cxr"
    for part in ("train", "val", "test"):
        rows = []
        for i in range(6):
            rel = f"p{i}/s{i}/image.dcm"
            write_dicom(root / part / rel, values + 100 * i, "MONOCHROME1" if i % 2 else "MONOCHROME2")
            rows.append((rel, i % 2))
        with open(root / f"{part}.csv", "w", newline="") as f:
            csv.writer(f).writerows([("Path", "Effusion"), *rows])
    report = validate_dataset(root)
    assert report.ok, report.format()
    index = prepare_here(tmp_path / "store", read_dataset(root), 32, 1, {"root": str(root)})
    assert index["partitions"]["train"]["sizes"][0] == [48, 40]
    bad = root / "val" / "p3" / "s3" / "image.dcm"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    (fault,) = validate_dataset(root).faults
    assert (fault.partition, fault.row, fault.file) == ("val", 5, "val/p3/s3/image.dcm")
    with pytest.raises(DataError) as e:
        prepare_here(tmp_path / "store2", read_dataset(root), 32, 1, {"root": str(root)})
    assert [(f.partition, f.row) for f in e.value.faults] == [("val", 5)]


# ---------------------------------------------------------------------------------------------
# moco data index: a folder tree to the seed layout


def _tree(folder: Path, layout: dict[str, int]) -> Path:
    for sub, n in layout.items():
        for i in range(n):
            path = folder / sub / f"img{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), i, np.uint8)).save(path)
    return folder


def _rows(root: Path, name: str) -> list[list[str]]:
    with open(root / f"{name}.csv", newline="") as f:
        return list(csv.reader(f))


def test_index_a_class_folder_tree_then_validate(tmp_path, capsys):
    from service.cli import main

    folder = _tree(tmp_path / "photos", {"cat": 30, "dog": 20, "bird": 0})
    (folder / "bird").mkdir(exist_ok=True)
    root = tmp_path / "ds"
    assert main(["data", "index", str(folder), "--out", str(root), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "2 classes" in out and "left out: bird" in out
    report = validate_dataset(root)
    assert report.ok, report.format()
    assert report.summary["train"]["label_kind"] == "multiclass"
    parts = {n: _rows(root, n) for n in ("train", "val", "test")}
    assert all(rows[0] == ["Path", "label"] for rows in parts.values())
    paths = [set(r[0] for r in rows[1:]) for rows in parts.values()]
    assert sum(map(len, paths)) == 50 and not (
        paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2]
    )
    assert {r[1] for r in parts["val"][1:]} == {"cat", "dog"}  # stratified: every class in val
    assert len(paths[1]) == 5 and len(paths[2]) == 5  # 10 % of 30 and of 20, each
    again = tmp_path / "ds2"
    assert main(["data", "index", str(folder), "--out", str(again), "--seed", "3"]) == 0
    assert _rows(again, "val") == parts["val"]  # seeded
    assert main(["data", "index", str(folder), "--out", str(tmp_path / "ds3"), "--seed", "4"]) == 0
    assert _rows(tmp_path / "ds3", "val") != parts["val"]


def test_index_a_flat_tree_and_an_empty_one(tmp_path, capsys):
    from service.cli import main

    folder = _tree(tmp_path / "flat", {".": 12, "more": 4})
    root = tmp_path / "ds"
    assert main(["data", "index", str(folder), "--out", str(root), "--val", "0.25", "--test", "0"]) == 0
    assert "no labels" in capsys.readouterr().out
    report = validate_dataset(root, partitions=("train", "val"))
    assert report.ok and report.summary["train"]["label_kind"] == "none"
    assert [len(_rows(root, n)) - 1 for n in ("train", "val", "test")] == [12, 4, 0]
    (tmp_path / "empty" / "a").mkdir(parents=True)
    assert main(["data", "index", str(tmp_path / "empty"), "--out", str(tmp_path / "e")]) == 1
    assert "no image under it" in capsys.readouterr().err
    assert main(["data", "index", str(folder), "--out", str(folder / "inside")]) == 1
    assert "must be outside" in capsys.readouterr().err
