"""Reading the CSV partitions of a dataset into ``Partition``s, with every fault collected."""

from __future__ import annotations

import csv
import hashlib
import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from .faults import DataError, Fault
from .labels import LabelKind, RawPartition, decide_kind, label_key, targets_of

PARTITIONS = ("train", "val", "test")


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
    # known without the files (a store's partitions: recorded when it was prepared from them)
    fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, rows: Sequence[int] | np.ndarray) -> Partition:
        """This partition restricted to ``rows`` (indices into it), in that order."""
        idx = [int(i) for i in rows]
        targets = None if self.targets is None else self.targets[np.asarray(idx, dtype=np.int64)]
        rows, paths = [self.rows[i] for i in idx], [self.paths[i] for i in idx]
        return replace(self, rows=rows, paths=paths, targets=targets, fingerprint=None)

    def relpath(self, i: int) -> str:
        """``"train/a/b.png"``: how faults name image ``i``."""
        return f"{self.name}/{self.paths[i].relative_to(self.folder).as_posix()}"


def _locations(root: str | Path, splits_dir: str | Path | None) -> tuple[Path, Path]:
    r = Path(root).expanduser().absolute()
    return r, (Path(splits_dir).expanduser().absolute() if splits_dir else r)


NAME_MAX = 255  # bytes in one file or folder name (ext4, XFS, NTFS, APFS)


def _path_problem(p: str) -> str | None:
    if not p:
        return "empty Path"
    if "\0" in p:
        return f"path {p!r} holds a NUL byte, which no file name can"
    longest = max(len(c.encode()) for c in p.split("/"))
    if longest > NAME_MAX:
        return f"a name of {longest} bytes in the path: a file or folder name is at most {NAME_MAX}"
    if PurePosixPath(p).is_absolute() or PureWindowsPath(p).is_absolute() or PureWindowsPath(p).drive:
        return f"absolute path {p!r}: Path must be relative to the partition folder"
    norm = posixpath.normpath(p)
    if norm == ".." or norm.startswith("../"):
        return f"path {p!r} resolves outside the partition folder"
    if norm == ".":
        return f"path {p!r} names the partition folder itself, not an image"
    return None


def _said(names: Sequence[str], values: Sequence[str]) -> str:
    return ", ".join(f"{c}={v}" for c, v in zip(names, values))


def _read_raw(
    root: Path, splits: Path, name: str, label_columns: Sequence[str] | None, check_files: bool
) -> tuple[RawPartition | None, list[Fault]]:
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
    raw = RawPartition(name, folder, csv_path, names)
    ip, il = header.index("Path"), [header.index(c) for c in names]
    first: dict[str, int] = {}  # normalised path -> its index in raw
    for line, rec in records[1:]:
        if len(rec) != len(header):
            fault(f"row has {len(rec)} fields, the header has {len(header)}", line)
            continue
        p = rec[ip].strip()
        problem = _path_problem(p)
        if problem:
            fault(problem, line, f"{name}/{p}" if p.isprintable() else None)
            continue
        shown, norm = f"{name}/{p}", posixpath.normpath(p)
        if check_files:
            try:
                if not (folder / norm).is_file():
                    fault("file not found" if not (folder / norm).exists() else "not a file", line, shown)
            except OSError as e:  # a path too long for the system, a folder we may not enter
                fault(f"cannot look at the file: {e.strerror or e}", line, shown)
        labels = [rec[j].strip() for j in il]
        if norm in first:
            k = first[norm]
            if [label_key(v) for v in labels] != [label_key(v) for v in raw.labels[k]]:
                there = "" if raw.shown[k] == shown else f" ({raw.shown[k]})"
                fault(
                    f"line {raw.rows[k]}{there} lists the same image with other labels: "
                    f"{_said(names, raw.labels[k])} there, {_said(names, labels)} here; "
                    "keep one of the two rows",
                    line,
                    shown,
                )
        else:
            first[norm] = len(raw.rows)
        raw.rows.append(line)
        raw.rel.append(norm)
        raw.shown.append(shown)
        raw.labels.append(labels)
    return raw, faults


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
    raws: list[RawPartition] = []
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
    kind, classes, f = decide_kind(names, raws)
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
            targets_of(x, kind, classes),
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


def files_fingerprint(names: Sequence[str], paths: Sequence[Path | str]) -> str:
    """sha256 over each file's name and size, in the order given (no image is read), hex[:16]."""
    h = hashlib.sha256()
    for name, path in zip(names, paths):
        try:
            size = os.stat(path).st_size
        except OSError:
            size = -1
        h.update(f"{name}\0{size}\n".encode())
    return h.hexdigest()[:16]


def dataset_fingerprint(partition: Partition) -> str:
    """``files_fingerprint`` of a partition's images, by their sorted relative paths."""
    if partition.fingerprint is not None:
        return partition.fingerprint
    pairs = sorted((p.relative_to(partition.folder).as_posix(), p) for p in partition.paths)
    return files_fingerprint([n for n, _ in pairs], [p for _, p in pairs])


def scoring_fingerprint(parts: Mapping[str, Partition]) -> str:
    """What a score measured on ``parts`` (the kNN monitor: train's labels voting for val's images)
    depends on: each partition's images (``dataset_fingerprint``) and its labels (columns, classes,
    every row's target), sha256 hex[:16]. Two scores compare only when it is the same."""
    h = hashlib.sha256()
    for name in sorted(parts):
        p = parts[name]
        h.update(f"{name}\0{dataset_fingerprint(p)}\0{p.label_names}\0{p.classes}\n".encode())
        if p.targets is not None:
            h.update(np.ascontiguousarray(p.targets).tobytes())
    return h.hexdigest()[:16]


__all__ = [
    "PARTITIONS",
    "Partition",
    "read_dataset",
    "read_partition",
    "files_fingerprint",
    "dataset_fingerprint",
    "scoring_fingerprint",
]
