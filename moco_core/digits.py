"""scikit-learn's handwritten digits (1797 real 8x8 scans, shipped with sklearn) in the seed layout.

``write_digits("data/digits")`` writes ``train/3/0042.png`` style grayscale PNGs (the number is the
image's index in ``load_digits()``), a stratified seeded 60/20/20 split, and ``train.csv``,
``val.csv``, ``test.csv`` with columns ``Path,digit``. A marker file records that the folder is a
digits dataset, so writing again replaces it, while a non-empty folder without the marker is refused.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .data import PARTITIONS
from .errors import UserError

MARKER = ".moco-digits.json"


def _is_digits_dataset(out: Path) -> bool:
    try:
        return json.loads((out / MARKER).read_text()).get("dataset") == "sklearn-digits"
    except (OSError, ValueError, AttributeError):
        return False


class OutputFolderError(UserError, FileExistsError):
    """The digits cannot be written where asked (a file, or a folder holding something else)."""


def write_digits(out: str | Path, image_size: int = 32, seed: int = 0) -> dict[str, int]:
    """Write the digits dataset to ``out``; returns the number of images per partition."""
    if not 8 <= image_size <= 1024:  # data.image_size's bounds: what the recipes and backbones take
        raise UserError(f"--image-size must be between 8 and 1024, not {image_size}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{out} exists and is not a folder; choose another output folder")
    if out.is_dir() and any(out.iterdir()):
        if not _is_digits_dataset(out):
            raise OutputFolderError(
                f"{out} is not empty and is not a digits dataset written by this tool "
                f"(no {MARKER}); refusing to write into it: choose an empty or new folder"
            )
        for name in PARTITIONS:  # replace our own earlier output, nothing else
            shutil.rmtree(out / name, ignore_errors=True)
            (out / f"{name}.csv").unlink(missing_ok=True)

    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    labels = digits.target.astype(int)
    idx = np.arange(len(labels))
    train, rest = train_test_split(idx, test_size=0.4, stratify=labels, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=labels[rest], random_state=seed)

    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for name, part in zip(PARTITIONS, (train, val, test)):
        rows = []
        for i in sorted(int(k) for k in part):
            rel = f"{labels[i]}/{i:04d}.png"
            dest = out / name / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(images[i]).resize((image_size, image_size), Image.BILINEAR)
            img.save(dest)
            rows.append((rel, int(labels[i])))
        with open(out / f"{name}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["Path", "digit"])
            w.writerows(rows)
        counts[name] = len(rows)
    (out / MARKER).write_text(
        json.dumps({"dataset": "sklearn-digits", "image_size": image_size, "seed": seed, "counts": counts})
    )
    return counts


__all__ = ["write_digits"]
