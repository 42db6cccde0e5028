"""``moco data index``: the seed layout written for a folder tree of images, so that a folder is two
commands away from ``moco pretrain``.

``FOLDER`` stays as it is. ``ROOT/train``, ``ROOT/val`` and ``ROOT/test`` become links to it, and each
partition's CSV lists its share of the images by their path inside ``FOLDER``. Class folders (no image
at the top, images under first-level folders) give a ``label`` column, the folder names; any other tree
gives none. The split is seeded, and stratified by class when there are classes.
"""

from __future__ import annotations

import csv
import io
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..files import write_atomic
from .faults import DataError, Fault
from .partitions import PARTITIONS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".dcm", ".dicom")


@dataclass
class Index:
    counts: dict[str, int]  # images per partition
    classes: list[str]  # [] for a tree without class folders
    empty_classes: list[str]  # class folders without an image (left out)


def find_images(folder: Path) -> list[str]:
    """Every image under ``folder`` (by suffix, symlinked folders not followed), as sorted posix paths."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                found.append((Path(dirpath) / name).relative_to(folder).as_posix())
    return sorted(found)


def _split(items: list[str], val: float, test: float, rng: random.Random) -> dict[str, list[str]]:
    items = list(items)
    rng.shuffle(items)
    n = len(items)
    n_val, n_test = round(n * val), round(n * test)
    if n >= 3:  # a fraction asked for gets at least one image, train keeps at least one
        n_val, n_test = max(n_val, int(val > 0)), max(n_test, int(test > 0))
    n_val, n_test = min(n_val, max(0, n - 1)), min(n_test, max(0, n - 1 - n_val))
    return {"val": items[:n_val], "test": items[n_val : n_val + n_test], "train": items[n_val + n_test :]}


def index_folder(
    folder: str | Path,
    out: str | Path,
    val: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    labels: bool = True,
) -> Index:
    """Write ``out/{train,val,test}.csv`` and the partition links for the images under ``folder``."""
    folder, out = Path(folder).expanduser().resolve(), Path(out).expanduser().absolute()
    if not folder.is_dir():
        raise DataError([Fault("", None, str(folder), "not a folder")], "nothing to index")
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise _refused(f"--val {val} and --test {test} must be fractions with val + test < 1")
    if out.resolve() == folder or folder in out.resolve().parents:
        raise _refused(f"--out {out} must be outside {folder} (its partition links point at it)")
    images = find_images(folder)
    if not images:
        raise DataError(
            [Fault("", None, str(folder), f"no image under it (looked for {', '.join(IMAGE_SUFFIXES)})")],
            "nothing to index",
        )
    top = [d.name for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    by_class: dict[str, list[str]] = defaultdict(list)
    classed = labels and all("/" in p for p in images) and len(top) >= 2
    for p in images:
        by_class[p.split("/", 1)[0] if classed else ""].append(p)
    rng = random.Random(seed)
    parts: dict[str, list[tuple[str, str]]] = {name: [] for name in PARTITIONS}
    for label in sorted(by_class):
        for name, chosen in _split(by_class[label], val, test, rng).items():
            parts[name] += [(p, label) for p in chosen]
    _write(out, folder, parts, classed)
    return Index(
        {n: len(v) for n, v in parts.items()},
        sorted(by_class) if classed else [],
        sorted(set(top) - set(by_class)) if classed else [],
    )


def _refused(message: str) -> DataError:
    return DataError([Fault("", None, None, message)], "cannot index")


def _write(out: Path, folder: Path, parts: dict[str, list[tuple[str, str]]], classed: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in parts.items():
        link = out / name
        if link.is_symlink() and Path(os.readlink(link)) != folder:
            link.unlink()  # an index of another folder: this one replaces it
        if not link.is_symlink():
            if link.exists():
                raise _refused(f"{link} exists and is not a link this command made; choose another --out")
            link.symlink_to(folder, target_is_directory=True)
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["Path", "label"] if classed else ["Path"])
        writer.writerows(sorted(rows) if classed else [(p,) for p, _ in sorted(rows)])
        value = text.getvalue()
        write_atomic(out / f"{name}.csv", lambda tmp, value=value: tmp.write_text(value))


__all__ = ["IMAGE_SUFFIXES", "Index", "find_images", "index_folder"]
