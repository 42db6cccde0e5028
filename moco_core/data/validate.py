"""``moco data validate``: every partition read and every image decoded, all faults collected."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .faults import DataError, Fault
from .images import _open
from .partitions import PARTITIONS, _locations, _read_all, dataset_fingerprint

_THREADS = max(1, min(8, os.cpu_count() or 1))


@dataclass
class ValidationReport:
    faults: list[Fault]
    summary: dict[str, Any]  # {"root", "splits_dir", partition: {...}}

    @property
    def ok(self) -> bool:
        return not self.faults

    @property
    def where(self) -> str:
        where = f"dataset {self.summary['root']}"
        if self.summary.get("splits_dir") != self.summary["root"]:
            where += f" (CSVs in {self.summary['splits_dir']})"
        return where

    def error(self) -> DataError:
        """Every fault as one ``DataError`` (what ``moco data validate`` ends with)."""
        n = len(self.faults)
        return DataError(self.faults, f"{self.where}: {n} problem{'s' if n != 1 else ''}")

    def format(self) -> str:
        if self.faults:
            return str(self.error())
        lines = [f"{self.where}: OK"]
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


__all__ = ["ValidationReport", "validate_dataset"]
