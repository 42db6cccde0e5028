"""Preparing a store: what is left to do, one shard written, and the index written last.

The driver of a prepare (``service.prepare`` on Ray, or :func:`prepare_here` in one process) calls
:func:`begin`, runs :func:`write_shard` for every pending shard (anywhere, in any order, as often as
it likes: a finished shard is skipped), then :func:`finish`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data import DataError, Fault, Partition, squashed
from ..files import write_atomic
from .format import (
    INDEX_FILE,
    PLAN_FILE,
    Shard,
    StoreError,
    plan_of,
    read_json,
    relpaths,
    shards_of,
)


@dataclass(frozen=True)
class ShardInput:
    """What one shard is made of: plain data, so that it travels to a Ray task."""

    store: str
    shard: Shard
    paths: list[str]  # absolute
    rows: list[int]  # CSV lines
    shown: list[str]  # "train/a/b.png", how faults name each image
    size: int
    channels: int


def begin(
    store: str | Path, parts: dict[str, Partition], size: int, channels: int, source: dict[str, Any]
) -> list[ShardInput]:
    """The shards still to write (none when the store is finished). A store folder that holds another
    source's or another size's store is refused: nothing of it is overwritten."""
    store = Path(store)
    plan = dict(plan_of(parts, size, channels), source=source)
    index = read_json(store / INDEX_FILE)
    if index is not None and not _same(index, plan):
        raise StoreError(
            f"{store} already holds a store of another dataset, size or channel count ({_what(index)}; "
            f"asked: {_what(plan)}): prepare into another folder, or remove {store} first"
        )
    if index is not None:
        return []
    store.mkdir(parents=True, exist_ok=True)
    old = read_json(store / PLAN_FILE)
    if old is not None and not _same(old, plan):
        raise StoreError(
            f"{store} holds a prepare of another dataset, size or channel count that was stopped before it "
            f"finished ({_what(old)}; asked: {_what(plan)}): prepare into another folder, or remove {store}"
        )
    if old is None:
        write_atomic(store / PLAN_FILE, lambda tmp: tmp.write_text(json.dumps(plan, indent=1)))
    pending = [s for s in shards_of(plan) if not _done(store, s)]
    return [_input(store, s, parts[s.partition], size, channels) for s in pending]


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("format", "size", "channels", "shard_images")
    fps = {n: p["fingerprint"] for n, p in a["partitions"].items()}
    return all(a.get(k) == b.get(k) for k in keys) and fps == {
        n: p["fingerprint"] for n, p in b["partitions"].items()
    }


def _what(plan: dict[str, Any]) -> str:
    fps = ", ".join(f"{n} {p['fingerprint']}" for n, p in plan["partitions"].items())
    return f"{plan['size']} px, {plan['channels']} channel(s), {fps}"


def _done(store: Path, shard: Shard) -> bool:
    return (store / f"{shard.stem}.npy").is_file() and (store / f"{shard.stem}.json").is_file()


def _input(store: Path, shard: Shard, p: Partition, size: int, channels: int) -> ShardInput:
    idx = range(shard.start, shard.start + shard.count)
    return ShardInput(
        str(store),
        shard,
        [str(p.paths[i]) for i in idx],
        [p.rows[i] for i in idx],
        [p.relpath(i) for i in idx],
        size,
        channels,
    )


def write_shard(job: ShardInput) -> list[Fault]:
    """Decode the shard's images and write it; returns the unreadable images (and writes nothing then).
    A full disk raises ``OSError`` and leaves no partial file."""
    store, shard = Path(job.store), job.shard
    final, meta = store / f"{shard.stem}.npy", store / f"{shard.stem}.json"
    if final.is_file() and meta.is_file():
        return []
    faults: list[Fault] = []
    sizes: list[tuple[int, int]] = []
    tmp = store / f".{shard.stem}.npy.tmp{os.getpid()}"
    shape = (shard.count, job.channels, job.size, job.size)
    header = {"descr": "|u1", "fortran_order": False, "shape": shape}
    try:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
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
        text = json.dumps({"sizes": sizes, "rows": job.rows})
        write_atomic(meta, lambda t: t.write_text(text))
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return []


def finish(store: str | Path, parts: dict[str, Partition]) -> dict[str, Any]:
    """Write the index of a store whose shards are all written (the last step of a prepare)."""
    store = Path(store)
    plan = read_json(store / PLAN_FILE)
    assert plan is not None, f"{store}: begin() first"
    index = dict(plan, partitions={})
    (store / "csv").mkdir(exist_ok=True)
    for name, p in plan["partitions"].items():
        sizes: list[list[int]] = []
        shards = []
        for s in (s for s in shards_of(plan) if s.partition == name):
            meta = read_json(store / f"{s.stem}.json")
            if meta is None or not (store / f"{s.stem}.npy").is_file():
                raise StoreError(f"{store}: shard {s.stem} is missing; run the prepare again to write it")
            sizes += meta["sizes"]
            shards.append({"file": f"{s.stem}.npy", "start": s.start, "count": s.count})
        part = parts[name]
        shutil.copyfile(part.csv_path, store / "csv" / f"{name}.csv")
        index["partitions"][name] = dict(p, paths=relpaths(part), rows=part.rows, sizes=sizes, shards=shards)
    write_atomic(store / INDEX_FILE, lambda tmp: tmp.write_text(json.dumps(index)))
    return index


def prepare_here(
    store: str | Path,
    parts: dict[str, Partition],
    size: int,
    channels: int,
    source: dict[str, Any],
    threads: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Prepare ``store`` in this process with ``threads`` decoding threads; returns the index. Raises
    ``DataError`` naming every unreadable image (the shards without one are kept)."""
    jobs = begin(store, parts, size, channels, source)
    faults: list[Fault] = []
    with ThreadPoolExecutor(max(1, threads)) as ex:
        for k, f in enumerate(ex.map(write_shard, jobs), 1):
            faults += f
            if progress is not None:
                progress(k, len(jobs))
    if faults:
        raise DataError(faults, f"{len(faults)} unreadable image(s); the other shards of {store} are kept")
    return finish(store, parts)


__all__ = ["ShardInput", "begin", "write_shard", "finish", "prepare_here"]
