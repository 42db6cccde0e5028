"""The label kind of a dataset (none, binary, multi-label, multi-class), decided from every partition
read together, and the targets of each partition (the rules are in the package docstring)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from .faults import Fault

LabelKind = Literal["none", "binary", "multilabel", "multiclass"]
BINARY_MAJORITY = 0.9  # share of 0/1 values above which a single numeric column counts as binary
# what spreadsheets and pandas write for a missing value: a missing label, never a class of its own
MISSING = frozenset({"na", "n/a", "#n/a", "nan", "null"})


@dataclass
class RawPartition:
    name: str
    folder: Path
    csv_path: Path
    label_names: list[str]
    rows: list[int] = field(default_factory=list)
    rel: list[str] = field(default_factory=list)  # normalised relative paths
    shown: list[str] = field(default_factory=list)  # "train/<Path as written>"
    labels: list[list[str]] = field(default_factory=list)


def _num(s: str) -> float | None:
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _is01(s: str) -> bool:
    return _num(s) in (0.0, 1.0)


def decide_kind(names: list[str], raws: list[RawPartition]) -> tuple[LabelKind, list[str], list[Fault]]:
    """The label kind and classes of all partitions together (see the module docstring)."""
    faults: list[Fault] = []
    cells = [(r, i, j, v) for r in raws for i, vals in enumerate(r.labels) for j, v in enumerate(vals)]
    for r, i, j, v in cells:
        if v == "":
            faults.append(Fault(r.name, r.rows[i], r.shown[i], f"empty label in column {names[j]}"))
        elif v.lower() in MISSING:
            faults.append(
                Fault(
                    r.name,
                    r.rows[i],
                    r.shown[i],
                    f"missing label {v!r} in column {names[j]}: every row needs a label "
                    "(fix the value or drop the row)",
                )
            )
    cells = [c for c in cells if c[3] != "" and c[3].lower() not in MISSING]
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


def label_key(v: str) -> str:
    """What a label cell stands for: ``1``, ``1.0`` and ``01`` are the same label."""
    x = _num(v)
    return str(int(x)) if x is not None and x.is_integer() else v


def _class_names(values: Iterable[str]) -> list[str]:
    keys = {label_key(v) for v in values}
    if all(_num(k) is not None for k in keys):
        return sorted(keys, key=lambda k: float(k))
    return sorted(keys)


def targets_of(raw: RawPartition, kind: LabelKind, classes: list[str]) -> np.ndarray | None:
    if kind == "none":
        return None
    if kind == "multiclass" and len(raw.label_names) == 1:
        index = {c: k for k, c in enumerate(classes)}
        return np.array([index.get(label_key(v[0]), -1) for v in raw.labels], dtype=np.int64)
    hot = np.array([[_num(x) == 1.0 for x in v] for v in raw.labels], dtype=np.float32)
    hot = hot.reshape(len(raw.labels), len(raw.label_names))
    return hot.argmax(axis=1).astype(np.int64) if kind == "multiclass" else hot


__all__ = ["LabelKind", "RawPartition", "decide_kind", "label_key", "targets_of"]
