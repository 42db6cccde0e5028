"""What a pretraining run reads, prepared on the driver: data paths every worker resolves the same
way, and the partitions (train, and val for the kNN monitor)."""

from __future__ import annotations

from pathlib import Path

from moco_core.config import ExperimentConfig
from moco_core.data import Partition, read_dataset
from moco_core.store import is_remote, store_partitions


def absolute_data_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """Workers run in other folders: make data paths absolute on the driver."""
    data = cfg.data.model_copy(
        update={
            "root": str(Path(cfg.data.root).expanduser().resolve()),
            "splits_dir": str(Path(cfg.data.splits_dir).expanduser().resolve())
            if cfg.data.splits_dir
            else None,
        }
    )
    return cfg.model_copy(update={"data": data})


def read_partitions(cfg: ExperimentConfig, check_files: bool) -> dict[str, Partition]:
    """``train`` (and ``val`` when its CSV exists, for the kNN monitor), read together; from the
    store's copies of the CSVs when the store is on object storage (the nodes need not see the
    dataset)."""
    store = cfg.data.store
    if store and is_remote(store):  # every partition it holds (one read of its index), test left out
        parts = store_partitions(store, cfg.data.label_columns)
        return {n: p for n, p in parts.items() if n in ("train", "val")}
    csv_dir = Path(cfg.data.splits_dir or cfg.data.root)
    names = ("train", "val") if (csv_dir / "val.csv").is_file() else ("train",)
    return read_dataset(cfg.data.root, cfg.data.splits_dir, cfg.data.label_columns, names, check_files)


__all__ = ["absolute_data_paths", "read_partitions"]
