"""``moco data prepare`` and ``data.prepare: auto``: a store prepared by Ray tasks, one per shard, on
the local cluster or the one named by an address (a cluster prepares in parallel), into a folder or
onto object storage (each task uploads its shard). A stopped prepare continues where it stopped
(finished shards are kept); a full disk keeps the finished shards too."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moco_core.config import ExperimentConfig
from moco_core.data import PARTITIONS, Fault, Partition, dataset_fingerprint, read_dataset
from moco_core.store import begin, check_source, folder_of, read_index, store_size, write_shard
from moco_core.store.format import SHARD_BYTES, describe_fault
from moco_core.store.prepare import conclude

from .ray_cluster import ensure_ray
from .records import storage_path_of
from .storage import absolute, is_uri, join

PROGRESS_EVERY_S = 10.0


def read_all(root: str | Path, splits_dir: str | Path | None, label_columns: list[str] | None) -> dict:
    """Every partition whose CSV exists (train at least), files checked: faults named before any work."""
    csv_dir = Path(splits_dir or root)
    names = [p for p in PARTITIONS if p == "train" or (csv_dir / f"{p}.csv").is_file()]
    return read_dataset(root, splits_dir, label_columns, names, check_files=True)


def dataset_source(
    root: str | Path, splits_dir: str | Path | None, label_columns: list[str] | None
) -> dict[str, Any]:
    """What a store records of the dataset it is prepared from (its plan's and index's ``source``)."""
    return {
        "root": str(root),
        "splits_dir": None if splits_dir is None else str(splits_dir),
        "label_columns": label_columns,
    }


def prepare_store(
    parts: dict[str, Partition],
    out: str | Path,
    size: int,
    channels: int,
    source: dict[str, Any],
    say: Callable[[str], None],
    address: str | None = None,
    shard_bytes: int = SHARD_BYTES,
) -> dict[str, Any]:
    """Prepare (or finish preparing) ``out`` from ``parts``; returns its index. Unreadable images are
    named all together (``DataError``); a full disk is a ``StoreError`` that says how much is kept."""
    out = folder_of(out)
    work = begin(out, parts, size, channels, source, shard_bytes)
    if not work.jobs:
        return conclude(out, parts, work, [], [])
    ensure_ray(address)  # before Ray is imported here: see ray_cluster.local_cluster_defaults
    import ray

    jobs = work.jobs
    total = sum(j.shard.count for j in jobs)
    if len(jobs) < work.shards:
        say(f"continuing {out}: {work.shards - len(jobs)} of {work.shards} shards were already written")
    say(f"preparing {out}: {total} images in {len(jobs)} shard(s) at {size} px, {channels} channel(s)")
    task = ray.remote(num_cpus=1, max_retries=0)(write_shard)
    pending = {task.remote(j): j for j in jobs}
    faults: list[Fault] = []
    failed: list[str] = []
    done_images, t0, last = 0, time.monotonic(), time.monotonic()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=PROGRESS_EVERY_S)
        for ref in ready:
            job = pending.pop(ref)
            try:
                faults += ray.get(ref)
            except Exception as e:  # noqa: BLE001 - a disk fault of one shard; the others go on
                failed.append(f"{job.shard.stem}: {describe_fault(getattr(e, 'cause', None) or e)}")
            done_images += job.shard.count
        if time.monotonic() - last >= PROGRESS_EVERY_S or not pending:
            rate = done_images / max(time.monotonic() - t0, 1e-9)
            say(f"  {done_images}/{total} images ({rate:.0f} images/s)")
            last = time.monotonic()
    index = conclude(out, parts, work, faults, failed)
    say(f"prepared {out} in {time.monotonic() - t0:.0f} s")
    return index


def default_store(cfg: ExperimentConfig, train: Partition) -> str:
    """Where ``data.prepare: auto`` puts a store when ``data.store`` is not set: under the run storage
    (a folder, or a URI: then on object storage), named by the dataset, its train fingerprint, the
    size and the channels."""
    name = Path(cfg.data.root).name or "data"
    folder = f"{name}-{dataset_fingerprint(train)[:8]}-{store_size(cfg.data)}px-{cfg.data.channels}ch"
    return join(storage_path_of(cfg), "stores", folder)


def with_store(
    cfg: ExperimentConfig, say: Callable[[str], None], address: str | None = None
) -> ExperimentConfig:
    """The config a run trains with: ``data.store`` prepared first with ``data.prepare: auto`` (from
    every partition, so that evaluation reads it too), or checked against every partition: a store
    from another source, size or channel count refused, before Ray Train starts. A store on object
    storage with no dataset beside the driver is checked for its size and channels only (its
    partitions are its own copies of the CSVs)."""
    data = cfg.data
    if data.prepare == "off" and not data.store:
        return cfg
    size = store_size(data)
    if data.prepare == "off" and is_uri(data.store) and not _has_csvs(data):
        check_source(data.store, read_index(data.store), {}, size, data.channels)
        return cfg
    parts = read_all(data.root, data.splits_dir, data.label_columns)
    store = data.store or default_store(cfg, parts["train"])
    if data.prepare == "auto":  # made from these very partitions: nothing to check afterwards
        source = dataset_source(data.root, data.splits_dir, data.label_columns)
        prepare_store(parts, store, size, data.channels, source, say, address)
    else:
        check_source(store, read_index(store), parts, size, data.channels, labels=is_uri(store))
    return cfg.model_copy(update={"data": data.model_copy(update={"store": absolute(store)})})


def _has_csvs(data) -> bool:
    return (Path(data.splits_dir or data.root).expanduser() / "train.csv").is_file()


__all__ = ["read_all", "dataset_source", "prepare_store", "default_store", "with_store"]
