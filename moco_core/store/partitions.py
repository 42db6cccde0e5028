"""The partitions of a store as it was prepared, read from its copies of the CSVs: what a node that
sees the store but not the dataset (a store on object storage) trains and evaluates on. Their rows,
labels, image names and fingerprints are the dataset's; their image paths are names only (the pixels
come from the store)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..data import PARTITIONS, Partition, read_dataset
from .format import StoreError, read_index
from .location import LocalFolder, RemoteFolder, folder_of


def store_partitions(
    store: str | Path | LocalFolder | RemoteFolder,
    label_columns: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, Partition]:
    """``names`` (default: every partition the store holds), one label kind and class index."""
    folder = folder_of(store)
    held = read_index(folder)["partitions"]
    names = [n for n in PARTITIONS if n in held] if names is None else list(names)
    with tempfile.TemporaryDirectory(prefix="moco-store-csv-") as tmp:
        for name in names:
            raw = folder.read_bytes(f"csv/{name}.csv") if name in held else None
            if raw is None:
                raise StoreError(f"{folder} has no partition {name!r} (no csv/{name}.csv); prepare it again")
            (Path(tmp) / f"{name}.csv").write_bytes(raw)
        parts = read_dataset(tmp, tmp, label_columns, names, check_files=False)
    return {n: replace(p, fingerprint=held[n]["fingerprint"]) for n, p in parts.items()}


__all__ = ["store_partitions"]
