"""The prepared store: its layout on disk, its index, and the checks that it was made from this dataset.

A store is a folder, here or on object storage (``s3://bucket/prefix``: see :mod:`.location`)::

    STORE/store.json                the index, written last: a store without it is not finished
    STORE/plan.json                 what is being prepared (source, size, channels, shard sizes)
    STORE/train-00000.npy ...       uint8 (n, C, S, S) shards, one file per ``shard_images`` images
    STORE/train-00000.json ...      each shard's original image sizes and CSV lines
    STORE/csv/train.csv ...         the partitions' CSVs as they were prepared (labels travel with it)

Every image is decoded once (``data.images.squashed``): 16-bit scaled to 8 bits, ``C`` channels,
resized to ``S`` x ``S`` (squashed, nothing cut off; the original height and width are kept, and crops
are drawn in the original geometry). A shard is written under a temporary name and renamed (or
uploaded) when complete, then its ``.json``: a shard with both, and the fingerprint of its images in
the ``.json``, is done, whatever stopped the prepare.
"""

from __future__ import annotations

import errno
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import Partition, dataset_fingerprint
from .errors import StoreError
from .location import folder_of

FORMAT = 1
INDEX_FILE = "store.json"
PLAN_FILE = "plan.json"
SHARD_BYTES = 64 << 20  # a shard holds about this much (at most MAX_SHARD_IMAGES images)
MAX_SHARD_IMAGES = 4096


def default_store_size(image_size: int) -> int:
    """The stored side ``S`` for a model input of ``image_size``: the input size itself for small
    images (CIFAR and the digits come at their training size), else 8/7 of it (256 for 224: the
    reference's resize-then-crop ratio, and room for crops to keep detail)."""
    return image_size if image_size <= 64 else math.ceil(image_size * 8 / 7)


def shard_images(size: int, channels: int, shard_bytes: int = SHARD_BYTES) -> int:
    return max(1, min(MAX_SHARD_IMAGES, shard_bytes // (channels * size * size)))


def csv_digest(partition: Partition) -> str:
    """Of the partition's CSV as it is: its labels travel with the store (workers reading a store on
    object storage take them from its copy), so a label edited since is noticed."""
    return hashlib.sha256(partition.csv_path.read_bytes()).hexdigest()[:16]


def relpaths(partition: Partition) -> list[str]:
    """Each image's path relative to its partition folder, in CSV order: how the store names it."""
    return [p.relative_to(partition.folder).as_posix() for p in partition.paths]


@dataclass(frozen=True)
class Shard:
    partition: str
    number: int
    start: int  # index of its first image in the partition (CSV order)
    count: int

    @property
    def stem(self) -> str:
        return f"{self.partition}-{self.number:05d}"


def plan_of(
    parts: dict[str, Partition], size: int, channels: int, shard_bytes: int = SHARD_BYTES
) -> dict[str, Any]:
    """What preparing ``parts`` at ``size`` x ``size`` x ``channels`` writes: the shards of each partition."""
    per = shard_images(size, channels, shard_bytes)
    return {
        "format": FORMAT,
        "size": size,
        "channels": channels,
        "shard_images": per,
        "partitions": {
            name: {"fingerprint": dataset_fingerprint(p), "csv": csv_digest(p), "images": len(p)}
            for name, p in parts.items()
        },
    }


def shards_of(plan: dict[str, Any]) -> list[Shard]:
    per = plan["shard_images"]
    return [
        Shard(name, k, start, min(per, p["images"] - start))
        for name, p in plan["partitions"].items()
        for k, start in enumerate(range(0, p["images"], per))
    ]


def incomplete(store: str | Path, failed: list[str], total: int) -> StoreError:
    """The error of a prepare some of whose shards could not be written (``failed``: one line each)."""
    more = "; ..." if len(failed) > 1 else ""
    return StoreError(
        f"{len(failed)} of {total} shard(s) of {store} could not be written ({failed[0]}{more}); the "
        "other shards are complete and kept: fix the cause (e.g. free disk space) and run the same "
        "prepare again, it continues where it stopped"
    )


def describe_fault(e: BaseException) -> str:
    """One line for a shard that could not be written (a full disk said so plainly)."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return f"no space left on the device{f' ({e.filename})' if e.filename else ''}"
    return f"{type(e).__name__}: {e}"


def read_index(store) -> dict[str, Any]:
    """The index of a finished store (a folder, a URI or a ``location`` folder); a ``StoreError``
    naming the store otherwise."""
    store = folder_of(store)
    if store.remote:
        store.check_reachable()  # an unreachable server or a missing bucket said so, in one line
    index = store.read_json(INDEX_FILE)
    if index is None:
        what = "is not finished" if store.exists(PLAN_FILE) else "is not a prepared store"
        raise StoreError(
            f"{store} {what} (no {INDEX_FILE}): run `moco data prepare ROOT --out {store}` "
            "(a prepare that was stopped continues where it stopped)"
        )
    if index.get("format") != FORMAT:
        raise StoreError(f"{store} has store format {index.get('format')}, this version reads {FORMAT}")
    return index


def check_source(
    store: str | Path,
    index: dict[str, Any],
    parts: dict[str, Partition],
    size: int | None = None,
    channels: int | None = None,
    labels: bool = False,
) -> None:
    """Refuse a store that was not prepared from these partitions (their fingerprints: paths and file
    sizes) or, when ``size`` / ``channels`` are given, at another size or channel count (a one-channel
    store serves a three-channel model too: its views are made in gray and replicated); with
    ``labels`` (the readers take the labels from the store's CSV copies: a store on object storage),
    from other CSVs too."""
    root = index["source"]["root"]
    prepare = f"prepare it again: `moco data prepare {root} --out {store}`"
    if size is not None and index["size"] != size:
        raise StoreError(
            f"{store} holds images of {index['size']} px and this run asks for {size} px "
            f"(data.store_size, default from data.image_size); prepare a store of that size in another "
            f"folder (`moco data prepare {root} --out NEW_STORE --size {size}`), or set "
            f"data.store_size={index['size']}"
        )
    for name, p in parts.items():
        have = index["partitions"].get(name)
        if have is None:
            raise StoreError(f"{store} has no partition {name!r}; {prepare}")
        fp = dataset_fingerprint(p)
        if have["fingerprint"] != fp:
            raise StoreError(
                f"{store} was prepared from another version of partition {name!r} (fingerprint "
                f"{have['fingerprint']}, the dataset now has {fp}: images added, removed or changed); "
                f"{prepare}"
            )
        if labels and have.get("csv") not in (None, csv_digest(p)):
            raise StoreError(
                f"{name}.csv changed since {store} was prepared (its labels or columns: the images are "
                f"the same); {prepare} (only the CSV copies are rewritten)"
            )
    if channels is not None and index["channels"] not in (channels, 1):  # gray feeds RGB, replicated
        raise StoreError(
            f"{store} holds {index['channels']}-channel images and data.channels is {channels}; prepare "
            f"one in another folder (`moco data prepare {root} --out NEW_STORE --channels {channels}`)"
        )


__all__ = [
    "FORMAT",
    "INDEX_FILE",
    "PLAN_FILE",
    "StoreError",
    "Shard",
    "default_store_size",
    "shard_images",
    "relpaths",
    "plan_of",
    "shards_of",
    "incomplete",
    "describe_fault",
    "csv_digest",
    "read_index",
    "check_source",
]
