"""The images of a partition, one at a time and of one fixed shape: from a prepared store (a few
bytes read at an offset, so a worker's memory does not grow with the data set, and the page cache is
shared by every process of the node), or decoded from the files on each access when there is none.

Both give ``item(i) -> (uint8 (C, S, S) array, (height, width) of the original)`` for row ``i`` of
the partition they were made for (in its order, whatever subset of the CSV it is).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..data import DataError, Fault, Partition, squashed
from .format import StoreError, default_store_size, read_index, relpaths


class FileImages:
    """Decoded from the image files at each access (no store): bounded memory, the decoding paid
    every epoch."""

    def __init__(self, partition: Partition, channels: int, size: int) -> None:
        self.partition, self.channels, self.size = partition, channels, size

    def __len__(self) -> int:
        return len(self.partition)

    def item(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        p = self.partition
        try:
            return squashed(p.paths[i], self.channels, self.size)
        except DataError as e:
            raise DataError(
                [Fault(p.name, p.rows[i], p.relpath(i), e.faults[0].message)],
                f"unreadable image in partition {p.name!r}",
            ) from None


class StoreImages:
    """Read from a prepared store with ``os.pread``: nothing is kept in memory but the index."""

    def __init__(self, store: str | Path, partition: Partition) -> None:
        self.store = Path(store)
        index = read_index(self.store)
        entry = index["partitions"].get(partition.name)
        if entry is None:
            raise StoreError(f"{self.store} has no partition {partition.name!r}; prepare it again")
        self.channels, self.size = index["channels"], index["size"]
        self._bytes = self.channels * self.size * self.size
        position = {rel: k for k, rel in enumerate(entry["paths"])}
        rows = []
        for k, rel in enumerate(relpaths(partition)):
            if rel not in position:
                raise StoreError(
                    f"{self.store} has no image {partition.relpath(k)}: it was prepared from another "
                    "version of the dataset; prepare it again"
                )
            rows.append(position[rel])
        starts = np.array([s["start"] for s in entry["shards"]], dtype=np.int64)
        self._files = [self.store / s["file"] for s in entry["shards"]]
        self._offsets = [_data_offset(f) for f in self._files]
        at = np.asarray(rows, dtype=np.int64)
        self._shard = np.searchsorted(starts, at, side="right") - 1
        self._local = at - starts[self._shard]
        self._sizes = [tuple(entry["sizes"][r]) for r in rows]
        self._fds: dict[int, int] = {}
        self._pid = -1

    def __len__(self) -> int:
        return len(self._sizes)

    def __getstate__(self) -> dict:  # file descriptors do not travel to spawned processes
        return dict(self.__dict__, _fds={}, _pid=-1)

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # a forked loader worker opens its own
            self._fds, self._pid = {}, os.getpid()
        if shard not in self._fds:
            self._fds[shard] = os.open(self._files[shard], os.O_RDONLY)
        return self._fds[shard]

    def item(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        s, local = int(self._shard[i]), int(self._local[i])
        raw = os.pread(self._fd(s), self._bytes, self._offsets[s] + local * self._bytes)
        if len(raw) != self._bytes:
            raise StoreError(f"{self._files[s]} is truncated; prepare the store again")
        pixels = np.frombuffer(raw, dtype=np.uint8).reshape(self.channels, self.size, self.size)
        return pixels, self._sizes[i]  # type: ignore[return-value]


def _data_offset(path: Path) -> int:
    """Where the pixels start in an ``.npy`` file (after its header)."""
    try:
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            fmt = np.lib.format
            (fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0)(f)
            return f.tell()
    except (OSError, ValueError) as e:
        raise StoreError(f"{path} cannot be read ({e}); prepare the store again") from None


def store_size(data: DataConfig) -> int:
    return data.store_size or default_store_size(data.image_size)


def images_of(data: DataConfig, partition: Partition) -> FileImages | StoreImages:
    """The images of ``partition``: from ``data.store`` when there is one, else from the files."""
    if data.store:
        return StoreImages(data.store, partition)
    return FileImages(partition, data.channels, store_size(data))


__all__ = ["FileImages", "StoreImages", "images_of", "store_size"]
