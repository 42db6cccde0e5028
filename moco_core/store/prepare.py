"""Preparing a store: what is left to do, one shard written, and the index written last.

The driver of a prepare (``service.prepare`` on Ray, or :func:`prepare_here` in one process) calls
:func:`begin`, runs :func:`write_shard` for every pending shard (anywhere, in any order, as often as
it likes: a finished shard is skipped), then :func:`finish`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data import DataError, Fault, Partition, squashed
from ..data.partitions import files_fingerprint
from .format import (
    INDEX_FILE,
    PLAN_FILE,
    SHARD_BYTES,
    Shard,
    StoreError,
    describe_fault,
    incomplete,
    plan_of,
    relpaths,
    shards_of,
)
from .location import LocalFolder, RemoteFolder, folder_of


@dataclass(frozen=True)
class ShardInput:
    """What one shard is made of: plain data, so that it travels to a Ray task."""

    store: LocalFolder | RemoteFolder
    shard: Shard
    paths: list[str]  # absolute
    rows: list[int]  # CSV lines
    shown: list[str]  # "train/a/b.png", how faults name each image
    size: int
    channels: int
    fingerprint: str  # of its images' names and file sizes: a shard is redone when they change


@dataclass(frozen=True)
class Work:
    """What a prepare has to do: the shards to write, out of all the store's shards."""

    jobs: list[ShardInput]
    shards: int


def begin(
    store: str | Path,
    parts: dict[str, Partition],
    size: int,
    channels: int,
    source: dict[str, Any],
    shard_bytes: int = SHARD_BYTES,
) -> Work:
    """The shards still to write: none when the store is finished and its source unchanged; those
    whose images changed (paths or file sizes) when the dataset changed since; those a stopped prepare
    did not finish. A continued prepare keeps its shard size; what a killed writer left half-written is
    removed (one prepare at a time per store). A folder holding the store of another dataset root,
    size or channel count is refused: nothing of it is overwritten."""
    store = folder_of(store)
    plan = dict(plan_of(parts, size, channels, shard_bytes), source=source)
    old = store.read_json(INDEX_FILE) or store.read_json(PLAN_FILE)
    if old is not None:
        keys = ("format", "size", "channels")
        if any(old.get(k) != plan[k] for k in keys) or old["source"]["root"] != source["root"]:
            raise StoreError(
                f"{store} already holds a store of another dataset, size or channel count "
                f"({_what(old)}; asked: {_what(plan)}): prepare into another folder, or remove {store} first"
            )
        plan["shard_images"] = old["shard_images"]
        if store.exists(INDEX_FILE) and _fingerprints(old) == _fingerprints(plan):
            return Work([], len(shards_of(old)))
    store.begin_writing()
    store.remove(INDEX_FILE)  # not finished until every shard matches the source
    store.write_text(PLAN_FILE, json.dumps(plan, indent=1))
    jobs = [_input(store, s, parts[s.partition], size, channels) for s in shards_of(plan)]
    return Work([job for job in jobs if not _done(job)], len(jobs))


def _fingerprints(plan: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    """Of the images and of the CSVs: a label edited since asks for new CSV copies (no shard)."""
    return {n: (p["fingerprint"], p.get("csv")) for n, p in plan["partitions"].items()}


def _what(plan: dict[str, Any]) -> str:
    fps = ", ".join(f"{n} {p['fingerprint']}" for n, p in plan["partitions"].items())
    return f"{plan['source']['root']}, {plan['size']} px, {plan['channels']} channel(s), {fps}"


def _done(job: ShardInput) -> bool:
    """Written, from these very images (paths and file sizes)."""
    store, stem = job.store, job.shard.stem
    meta = store.read_json(f"{stem}.json") if store.exists(f"{stem}.npy") else None
    return meta is not None and meta.get("fingerprint") == job.fingerprint


def _input(
    store: LocalFolder | RemoteFolder, shard: Shard, p: Partition, size: int, channels: int
) -> ShardInput:
    idx = range(shard.start, shard.start + shard.count)
    paths, shown = [str(p.paths[i]) for i in idx], [p.relpath(i) for i in idx]
    rows = [p.rows[i] for i in idx]
    return ShardInput(store, shard, paths, rows, shown, size, channels, files_fingerprint(shown, paths))


def write_shard(job: ShardInput) -> list[Fault]:
    """Decode the shard's images and write it; returns the unreadable images (and writes nothing then).
    A full disk raises ``OSError`` and leaves no partial file."""
    store, shard = job.store, job.shard
    if _done(job):
        return []
    faults: list[Fault] = []
    sizes: list[tuple[int, int]] = []
    tmp = store.scratch(f"{shard.stem}.npy")
    shape = (shard.count, job.channels, job.size, job.size)
    header = {"descr": "|u1", "fortran_order": False, "shape": shape}
    try:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            offset = f.tell()  # where the pixels start: a reader of object storage need not ask
            for path, row, shown in zip(job.paths, job.rows, job.shown):
                try:
                    pixels, original = squashed(path, job.channels, job.size)
                except DataError as e:
                    faults.append(Fault(shard.partition, row, shown, e.faults[0].message))
                    continue
                if not faults:
                    f.write(pixels.tobytes())
                sizes.append(original)
        if faults:
            return faults
        store.put(f"{shard.stem}.npy", tmp)  # then its .json: both, and matching, say it is done
        meta = {"sizes": sizes, "rows": job.rows, "fingerprint": job.fingerprint, "offset": offset}
        store.write_text(f"{shard.stem}.json", json.dumps(meta))
    finally:
        tmp.unlink(missing_ok=True)
    return []


def finish(store: str | Path, parts: dict[str, Partition]) -> dict[str, Any]:
    """Write the index of a store whose shards are all written (the last step of a prepare)."""
    store = folder_of(store)
    plan = store.read_json(PLAN_FILE)
    assert plan is not None, f"{store}: begin() first"
    index = dict(plan, partitions={})
    for name, p in plan["partitions"].items():
        sizes: list[list[int]] = []
        shards = []
        for s in (s for s in shards_of(plan) if s.partition == name):
            meta = store.read_json(f"{s.stem}.json")
            if meta is None or not store.exists(f"{s.stem}.npy"):
                raise StoreError(f"{store}: shard {s.stem} is missing; run the prepare again to write it")
            sizes += meta["sizes"]
            shard = {"file": f"{s.stem}.npy", "start": s.start, "count": s.count}
            shards.append(dict(shard, fingerprint=meta["fingerprint"], offset=meta.get("offset")))
        part = parts[name]
        store.write_text(f"csv/{name}.csv", part.csv_path.read_text())
        index["partitions"][name] = dict(p, paths=relpaths(part), rows=part.rows, sizes=sizes, shards=shards)
    store.write_text(INDEX_FILE, json.dumps(index))
    return index


def prepare_here(
    store: str | Path,
    parts: dict[str, Partition],
    size: int,
    channels: int,
    source: dict[str, Any],
    threads: int = 4,
    shard_bytes: int = SHARD_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Prepare ``store`` in this process with ``threads`` decoding threads; returns the index. Raises
    ``DataError`` naming every unreadable image (the shards without one are kept)."""
    work = begin(store, parts, size, channels, source, shard_bytes)
    faults: list[Fault] = []
    failed: list[str] = []
    with ThreadPoolExecutor(max(1, threads)) as ex:
        futures = {ex.submit(write_shard, job): job for job in work.jobs}
        for k, future in enumerate(as_completed(futures), 1):
            try:
                faults += future.result()
            except OSError as e:  # a full disk: the other shards go on, and are kept
                failed.append(f"{futures[future].shard.stem}: {describe_fault(e)}")
            if progress is not None:
                progress(k, len(work.jobs))
    return conclude(store, parts, work, faults, failed)


def conclude(
    store: str | Path, parts: dict[str, Partition], work: Work, faults: list[Fault], failed: list[str]
) -> dict[str, Any]:
    """The end of a prepare, whoever wrote the shards: the shards that could not be written
    (``failed``: one line each) or the unreadable images (``faults``) raised, all of them; else the
    index, written unless the store was finished already."""
    if failed:
        raise incomplete(store, failed, len(work.jobs))
    if faults:
        raise DataError(faults, f"{len(faults)} unreadable image(s); the other shards of {store} are kept")
    store = folder_of(store)
    if not work.jobs and store.exists(INDEX_FILE):
        return store.read_json(INDEX_FILE)  # type: ignore[return-value]
    return finish(store, parts)


__all__ = ["ShardInput", "Work", "begin", "write_shard", "finish", "conclude", "prepare_here"]
