"""The seed dataset format: CSV partitions, label kinds, validation and image decoding.

Layout (kept exactly as the users' existing tooling writes it)::

    root/train/...images...   train.csv      (CSVs in ``root``, or in ``splits_dir`` when given;
    root/val/...images...     val.csv         a relative root or splits_dir is relative to the
    root/test/...images...    test.csv        current directory)

Each CSV has a ``Path`` column: the image path relative to that partition's folder (``a/b.png`` in
``train.csv`` means ``root/train/a/b.png``). Sub-folders are allowed; an absolute path or one that
leaves the partition folder (``../x.png``, ``a/../../x.png``) is a fault. The check is lexical, so a
symlink that the dataset's owner placed inside the folder is followed.

Label columns are every other column, or exactly ``label_columns`` when given (``[]``: ignore labels).
The label kind is decided from all partitions read together, so train/val/test agree on it and on the
class indices:

* no label column: ``"none"``.
* several label columns: every value must be 0 or 1 (a fault names row, column and value otherwise).
  ``"multiclass"`` (classes = column names) when every row has exactly one 1 (one-hot), else
  ``"multilabel"``.
* one label column with only 0/1 values: ``"binary"``.
* one label column whose values are all numeric and at least 90 % of them 0/1: still ``"binary"``,
  and every other value is a fault (``label value 2 in binary column Pneumonia``): a stray 2 in a
  Pneumonia column is a data error, not a third class.
* any other single column (ints or strings): ``"multiclass"``, classes = the sorted distinct values
  (integers sorted numerically).

Empty label cells are faults. Every reader collects *all* faults before raising one ``DataError``.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import posixpath
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from .errors import UserError

PARTITIONS = ("train", "val", "test")
LabelKind = Literal["none", "binary", "multilabel", "multiclass"]
BINARY_MAJORITY = 0.9  # share of 0/1 values above which a single numeric column counts as binary
_THREADS = max(1, min(8, os.cpu_count() or 1))


@dataclass(frozen=True)
class Fault:
    """One problem with the dataset, located as precisely as possible."""

    partition: str  # "train", "val", "test"; "" when unknown (load_image on a bare path)
    row: int | None  # CSV line number (the header is line 1)
    file: str | None  # "train/a/b.png" (partition folder + CSV Path) or a bare path
    message: str

    def __str__(self) -> str:
        loc = f"{self.partition}.csv" if self.partition else ""
        if self.row is not None:
            loc += f" line {self.row}"
        if self.file:
            loc = f"{loc} ({self.file})" if loc else self.file
        return f"{loc}: {self.message}" if loc else self.message


class DataError(UserError, ValueError):
    """The dataset cannot be used; ``str()`` lists every fault, one per line."""

    def __init__(self, faults: Sequence[Fault], header: str | None = None) -> None:
        self.faults = list(faults)
        self.header = header
        n = len(self.faults)
        head = header or f"{n} problem{'s' if n != 1 else ''} with the dataset"
        super().__init__("\n".join([head + ":"] + [f"  {f}" for f in self.faults]))

    def __reduce__(self):  # picklable (Ray ships exceptions between processes)
        return (DataError, (self.faults, self.header))


@dataclass
class Partition:
    """One partition read from its CSV; ``paths`` are absolute, in CSV order."""

    name: str
    folder: Path
    csv_path: Path
    rows: list[int]
    paths: list[Path]
    label_names: list[str]
    label_kind: LabelKind
    classes: list[str]
    targets: np.ndarray | None  # multiclass: int64 (n,); binary/multilabel: float32 (n, L); none: None

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, rows: Sequence[int] | np.ndarray) -> Partition:
        """This partition restricted to ``rows`` (indices into it), in that order."""
        idx = [int(i) for i in rows]
        targets = None if self.targets is None else self.targets[np.asarray(idx, dtype=np.int64)]
        return replace(
            self, rows=[self.rows[i] for i in idx], paths=[self.paths[i] for i in idx], targets=targets
        )

    def relpath(self, i: int) -> str:
        """``"train/a/b.png"``: how faults name image ``i``."""
        return f"{self.name}/{self.paths[i].relative_to(self.folder).as_posix()}"


# ---------------------------------------------------------------------------------------------
# reading CSVs


@dataclass
class _Raw:
    name: str
    folder: Path
    csv_path: Path
    label_names: list[str]
    rows: list[int] = field(default_factory=list)
    rel: list[str] = field(default_factory=list)  # normalised relative paths
    shown: list[str] = field(default_factory=list)  # "train/<Path as written>"
    labels: list[list[str]] = field(default_factory=list)


def _locations(root: str | Path, splits_dir: str | Path | None) -> tuple[Path, Path]:
    r = Path(root).expanduser().absolute()
    return r, (Path(splits_dir).expanduser().absolute() if splits_dir else r)


def _path_problem(p: str) -> str | None:
    if not p:
        return "empty Path"
    if PurePosixPath(p).is_absolute() or PureWindowsPath(p).is_absolute() or PureWindowsPath(p).drive:
        return f"absolute path {p!r}: Path must be relative to the partition folder"
    norm = posixpath.normpath(p)
    if norm == ".." or norm.startswith("../"):
        return f"path {p!r} resolves outside the partition folder"
    if norm == ".":
        return f"path {p!r} names the partition folder itself, not an image"
    return None


def _read_raw(
    root: Path, splits: Path, name: str, label_columns: Sequence[str] | None, check_files: bool
) -> tuple[_Raw | None, list[Fault]]:
    csv_path, folder = splits / f"{name}.csv", root / name
    faults: list[Fault] = []

    def fault(msg: str, row: int | None = None, file: str | None = None) -> None:
        faults.append(Fault(name, row, file, msg))

    if not csv_path.is_file():
        fault(f"{csv_path} not found (one CSV per partition: {', '.join(p + '.csv' for p in PARTITIONS)})")
        return None, faults
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            records: list[tuple[int, list[str]]] = []
            prev = 0
            for rec in reader:
                if rec and any(c.strip() for c in rec):
                    records.append((prev + 1, rec))
                prev = reader.line_num
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        fault(f"cannot read {csv_path}: {e}")
        return None, faults
    if not records:
        fault(f"{csv_path} is empty: expected a header with a Path column and one row per image")
        return None, faults
    header_line, header = records[0]
    header = [c.strip() for c in header]
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        fault(f"duplicate column(s) {dupes} in the header", header_line)
    if "Path" not in header:
        fault(
            f"no 'Path' column in the header (columns: {header}); Path holds each image's file "
            f"path relative to {folder}",
            header_line,
        )
    if label_columns is None:
        names = [c for c in header if c != "Path"]
    else:
        names = list(label_columns)
        missing = [c for c in names if c not in header]
        if missing or "Path" in names:
            fault(f"label column(s) {missing or ['Path']} not usable (columns: {header})", header_line)
    if faults:
        return None, faults
    if len(records) == 1:
        fault(f"partition {name!r} is empty: {csv_path} has a header but no rows")
    if check_files and not folder.is_dir():
        fault(f"partition folder {folder} not found")
        check_files = False
    raw = _Raw(name, folder, csv_path, names)
    ip, il = header.index("Path"), [header.index(c) for c in names]
    for line, rec in records[1:]:
        if len(rec) != len(header):
            fault(f"row has {len(rec)} fields, the header has {len(header)}", line)
            continue
        p = rec[ip].strip()
        shown = f"{name}/{p}"
        problem = _path_problem(p)
        norm = posixpath.normpath(p) if p else p
        if problem:
            fault(problem, line, shown)
            continue
        if check_files and not (folder / norm).is_file():
            fault("file not found" if not (folder / norm).exists() else "not a file", line, shown)
        raw.rows.append(line)
        raw.rel.append(norm)
        raw.shown.append(shown)
        raw.labels.append([rec[j].strip() for j in il])
    return raw, faults


def _num(s: str) -> float | None:
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _is01(s: str) -> bool:
    return _num(s) in (0.0, 1.0)


def _decide_kind(names: list[str], raws: list[_Raw]) -> tuple[LabelKind, list[str], list[Fault]]:
    """The label kind and classes of all partitions together (see the module docstring)."""
    faults: list[Fault] = []
    cells = [(r, i, j, v) for r in raws for i, vals in enumerate(r.labels) for j, v in enumerate(vals)]
    for r, i, j, v in cells:
        if v == "":
            faults.append(Fault(r.name, r.rows[i], r.shown[i], f"empty label in column {names[j]}"))
    cells = [c for c in cells if c[3] != ""]
    if not names:
        return "none", [], faults
    if len(names) > 1:
        for r, i, j, v in cells:
            if not _is01(v):
                faults.append(
                    Fault(
                        r.name,
                        r.rows[i],
                        r.shown[i],
                        f"label value {v} in column {names[j]}: with several label columns "
                        f"every value must be 0 or 1 (multi-label or one-hot)",
                    )
                )
        one_hot = all(sum(_num(v) == 1.0 for v in vals) == 1 for r in raws for vals in r.labels)
        return ("multiclass" if one_hot else "multilabel"), (list(names) if one_hot else []), faults
    values = [v for *_, v in cells]
    n01 = sum(_is01(v) for v in values)
    if n01 == len(values):
        return "binary", [], faults
    if all(_num(v) is not None for v in values) and n01 >= BINARY_MAJORITY * len(values):
        for r, i, _, v in cells:
            if not _is01(v):
                faults.append(
                    Fault(
                        r.name,
                        r.rows[i],
                        r.shown[i],
                        f"label value {v} in binary column {names[0]} ({n01} of {len(values)} "
                        f"values are 0/1; fix this value or drop the row)",
                    )
                )
        return "binary", [], faults
    return "multiclass", _class_names(values), faults


def _class_key(v: str) -> str:
    x = _num(v)
    return str(int(x)) if x is not None and x.is_integer() else v


def _class_names(values: Iterable[str]) -> list[str]:
    keys = {_class_key(v) for v in values}
    if all(_num(k) is not None for k in keys):
        return sorted(keys, key=lambda k: float(k))
    return sorted(keys)


def _targets(raw: _Raw, kind: LabelKind, classes: list[str]) -> np.ndarray | None:
    if kind == "none":
        return None
    if kind == "multiclass" and len(raw.label_names) == 1:
        index = {c: k for k, c in enumerate(classes)}
        return np.array([index.get(_class_key(v[0]), -1) for v in raw.labels], dtype=np.int64)
    hot = np.array([[_num(x) == 1.0 for x in v] for v in raw.labels], dtype=np.float32)
    hot = hot.reshape(len(raw.labels), len(raw.label_names))
    return hot.argmax(axis=1).astype(np.int64) if kind == "multiclass" else hot


def _read_all(
    root: str | Path,
    splits_dir: str | Path | None,
    label_columns: Sequence[str] | None,
    partitions: Sequence[str],
    check_files: bool,
) -> tuple[dict[str, Partition], list[Fault]]:
    for p in partitions:
        if p not in PARTITIONS:
            raise ValueError(f"unknown partition {p!r}; expected one of {PARTITIONS}")
    r, s = _locations(root, splits_dir)
    faults: list[Fault] = []
    raws: list[_Raw] = []
    for name in partitions:
        raw, f = _read_raw(r, s, name, label_columns, check_files)
        faults += f
        if raw is not None:
            raws.append(raw)
    if not raws:
        return {}, faults
    names = raws[0].label_names
    for raw in raws[1:]:
        if sorted(raw.label_names) != sorted(names):
            faults.append(
                Fault(
                    raw.name,
                    1,
                    None,
                    f"label columns {raw.label_names} differ from {raws[0].name}.csv's {names}",
                )
            )
        else:
            order = [raw.label_names.index(c) for c in names]
            raw.labels = [[v[k] for k in order] for v in raw.labels]
            raw.label_names = list(names)
    raws = [x for x in raws if x.label_names == names]
    kind, classes, f = _decide_kind(names, raws)
    faults += f
    out = {
        x.name: Partition(
            x.name,
            x.folder,
            x.csv_path,
            x.rows,
            [x.folder / q for q in x.rel],
            list(names),
            kind,
            classes,
            _targets(x, kind, classes),
        )
        for x in raws
    }
    return out, faults


def read_dataset(
    root: str | Path,
    splits_dir: str | Path | None = None,
    label_columns: Sequence[str] | None = None,
    partitions: Sequence[str] = PARTITIONS,
    check_files: bool = True,
) -> dict[str, Partition]:
    """Several partitions read together (one label kind, one class index); raises with all faults."""
    parts, faults = _read_all(root, splits_dir, label_columns, partitions, check_files)
    if faults:
        raise DataError(faults, _header(root, splits_dir, len(faults)))
    return parts


def read_partition(
    root: str | Path,
    partition: str,
    splits_dir: str | Path | None = None,
    label_columns: Sequence[str] | None = None,
    check_files: bool = True,
) -> Partition:
    """One partition (label kind from this partition alone); raises ``DataError`` with all faults."""
    return read_dataset(root, splits_dir, label_columns, (partition,), check_files)[partition]


def _header(root: str | Path, splits_dir: str | Path | None, n: int) -> str:
    r, s = _locations(root, splits_dir)
    where = f"dataset {r}" + (f" (CSVs in {s})" if s != r else "")
    return f"{where}: {n} problem{'s' if n != 1 else ''}"


# ---------------------------------------------------------------------------------------------
# images

_HIGH_DEPTH = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def _open(path: str | Path) -> Image.Image:
    """Open and fully decode one image (the first frame); raises ``DataError`` naming the file."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        raise DataError(
            [Fault("", None, str(path), f"cannot decode image ({type(e).__name__}: {e})")], "unreadable image"
        ) from None


def load_image(path: str | Path, channels: int) -> torch.Tensor:
    """Decode an image file into a uint8 ``(channels, H, W)`` tensor.

    16-bit and 32-bit gray (modes ``I;16``, ``I``, ``F``) are min-max scaled per image to 0..255
    (never clipped; a constant image becomes 0). Transparent images are composited onto white.
    Palette, CMYK and other colour modes become RGB. One channel is the luminance (ITU-R 601);
    three channels from a gray image repeat it.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    im = _open(path)
    if im.mode in _HIGH_DEPTH:
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
        im = Image.fromarray(np.rint(a).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if im.mode == "1":
        im = im.convert("L")
    if im.mode != "L":
        im = im.convert("RGB")
    if channels == 1 and im.mode == "RGB":
        im = im.convert("L")
    a = np.asarray(im, dtype=np.uint8)
    t = torch.from_numpy(a.copy())
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()
    return t.expand(3, -1, -1).contiguous() if channels == 3 and t.shape[0] == 1 else t


class ImageDataset(torch.utils.data.Dataset):
    """``(image, index)`` of a partition; ``image`` is ``transform(uint8 (C,H,W))`` or the raw tensor."""

    def __init__(
        self, partition: Partition, channels: int, transform: Callable | None = None, cache: bool = False
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {channels}")
        self.partition, self.channels, self.transform = partition, channels, transform
        self._cache: list[torch.Tensor | None] | None = [None] * len(partition) if cache else None

    def __len__(self) -> int:
        return len(self.partition)

    def _decode(self, i: int) -> torch.Tensor:
        p = self.partition
        try:
            return load_image(p.paths[i], self.channels)
        except DataError as e:
            raise DataError(
                [Fault(p.name, p.rows[i], p.relpath(i), e.faults[0].message)],
                f"unreadable image in partition {p.name!r}",
            ) from None

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = self._cache[i] if self._cache is not None else None
        if img is None:
            img = self._decode(i)
            if self._cache is not None:
                self._cache[i] = img
        return (self.transform(img) if self.transform is not None else img), i

    def preload(self) -> None:
        """Decode every image once into memory (call before DataLoader workers fork)."""

        def one(i: int) -> torch.Tensor | Fault:
            try:
                return self._decode(i)
            except DataError as e:
                return e.faults[0]

        with ThreadPoolExecutor(_THREADS) as ex:
            out = list(ex.map(one, range(len(self))))
        faults = [x for x in out if isinstance(x, Fault)]
        if faults:
            raise DataError(faults, f"{len(faults)} unreadable image(s) in partition {self.partition.name!r}")
        if out and all(t.shape == out[0].shape for t in out):  # type: ignore[union-attr]
            # one storage instead of thousands: cheap to share with spawned DataLoader workers
            self._cache = list(torch.stack(out).unbind(0))  # type: ignore[arg-type]
        else:
            self._cache = out  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------
# validation


@dataclass
class ValidationReport:
    faults: list[Fault]
    summary: dict[str, Any]  # {"root", "splits_dir", partition: {...}}

    @property
    def ok(self) -> bool:
        return not self.faults

    def format(self) -> str:
        where = f"dataset {self.summary['root']}"
        if self.summary.get("splits_dir") != self.summary["root"]:
            where += f" (CSVs in {self.summary['splits_dir']})"
        if self.faults:
            n = len(self.faults)
            return "\n".join(
                [f"{where}: {n} problem{'s' if n != 1 else ''}:"] + [f"  {f}" for f in self.faults]
            )
        lines = [f"{where}: OK"]
        for name in PARTITIONS:
            s = self.summary.get(name)
            if s is None:
                continue
            line = f"  {name}: {s['images']} images, labels: {s['label_kind']}"
            if s["label_names"]:
                line += f" {s['label_names']}"
            if s["classes"]:
                line += f", {len(s['classes'])} classes"
            if s["min_size"]:
                line += (
                    f", sizes {s['min_size'][0]}x{s['min_size'][1]} .. {s['max_size'][0]}x{s['max_size'][1]}"
                )
            if s["modes"]:
                line += ", modes " + " ".join(f"{m}:{c}" for m, c in sorted(s["modes"].items()))
            lines.append(line)
            if s["counts"]:
                lines.append("    counts: " + "  ".join(f"{k}={v}" for k, v in s["counts"].items()))
        return "\n".join(lines)


def _probe(path: Path) -> tuple[str, tuple[int, int]] | str:
    try:
        im = _open(path)
    except DataError as e:
        return e.faults[0].message
    return im.mode, im.size


def validate_dataset(
    root: str | Path,
    splits_dir: str | Path | None = None,
    label_columns: Sequence[str] | None = None,
    decode: bool = True,
    partitions: Sequence[str] = PARTITIONS,
) -> ValidationReport:
    """Check every partition and (with ``decode``) decode every image; collects all faults."""
    r, s = _locations(root, splits_dir)
    parts, faults = _read_all(r, s, label_columns, partitions, check_files=True)
    summary: dict[str, Any] = {"root": str(r), "splits_dir": str(s)}
    for name, p in parts.items():
        t = p.targets
        if t is None:
            counts: dict[str, int] = {}
        elif p.label_kind == "multiclass":
            counts = {c: int((t == k).sum()) for k, c in enumerate(p.classes)}
        else:
            counts = {c: int(t[:, j].sum()) for j, c in enumerate(p.label_names)}
        modes: Counter[str] = Counter()
        sizes: list[tuple[int, int]] = []
        if decode:
            todo = [i for i in range(len(p)) if p.paths[i].is_file()]
            with ThreadPoolExecutor(_THREADS) as ex:
                results = list(ex.map(_probe, [p.paths[i] for i in todo]))
            for i, res in zip(todo, results):
                if isinstance(res, str):
                    faults.append(Fault(name, p.rows[i], p.relpath(i), res))
                else:
                    modes[res[0]] += 1
                    sizes.append(res[1])
        summary[name] = {
            "images": len(p),
            "label_kind": p.label_kind,
            "label_names": p.label_names,
            "classes": p.classes,
            "counts": counts,
            "modes": modes,
            "min_size": (min(w for w, _ in sizes), min(h for _, h in sizes)) if sizes else None,
            "max_size": (max(w for w, _ in sizes), max(h for _, h in sizes)) if sizes else None,
            "fingerprint": dataset_fingerprint(p),
        }
    order = {n: k for k, n in enumerate(PARTITIONS)}
    faults.sort(key=lambda f: (order.get(f.partition, 99), f.row or 0))
    return ValidationReport(faults, summary)


def dataset_fingerprint(partition: Partition) -> str:
    """sha256 over the sorted relative paths and file sizes (cheap; no image is read), hex[:16]."""
    h = hashlib.sha256()
    for rel, path in sorted((p.relative_to(partition.folder).as_posix(), p) for p in partition.paths):
        try:
            size = path.stat().st_size
        except OSError:
            size = -1
        h.update(f"{rel}\0{size}\n".encode())
    return h.hexdigest()[:16]


__all__ = [
    "PARTITIONS",
    "Fault",
    "DataError",
    "Partition",
    "read_partition",
    "read_dataset",
    "load_image",
    "ImageDataset",
    "ValidationReport",
    "validate_dataset",
    "dataset_fingerprint",
]
