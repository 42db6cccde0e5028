"""The images of a partition, one at a time and of one fixed shape: from a prepared store (a few
bytes read at an offset, so a worker's memory does not grow with the data set, and the page cache is
shared by every process of the node), or decoded from the files on each access when there is none.

Both give ``item(i) -> (uint8 (C, S, S) array, (height, width) of the original)`` for row ``i`` of
the partition they were made for (in its order, whatever subset of the CSV it is). A store on object
storage is read in blocks of whole images through the node's :class:`~.cache.BlockCache` (or, with
``data.store_cache_gb: 0``, one ranged read per image).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..data import DataError, Fault, Partition, squashed
from .cache import BlockCache, default_cache_folder
from .format import StoreError, default_store_size, read_index, relpaths
from .location import LocalFolder, RemoteFolder, folder_of

BLOCK_BYTES = 8 << 20  # what one read of a store on object storage fetches (whole images)


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
    """Read from a prepared store: with ``os.pread`` from a local one, in cached blocks from one on
    object storage; nothing is kept in memory but the index."""

    def __init__(
        self,
        store: str | Path | LocalFolder | RemoteFolder,
        partition: Partition,
        cache: BlockCache | None = None,
    ) -> None:
        self.store = folder_of(store)
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
        shards = entry["shards"]
        starts = np.array([s["start"] for s in shards], dtype=np.int64)
        self._names = [s["file"] for s in shards]
        self._counts = [s["count"] for s in shards]
        self._offsets = [s.get("offset") for s in shards]  # None: read from the header when needed
        store_id = hashlib.sha256(str(self.store).encode()).hexdigest()[:12]
        self._keys = [f"{store_id}-{s.get('fingerprint', '')[:16]}-{s['file'][:-4]}" for s in shards]
        self._per_block = max(1, BLOCK_BYTES // self._bytes)
        self.cache = cache if self.store.remote else None
        at = np.asarray(rows, dtype=np.int64)
        self._shard = np.searchsorted(starts, at, side="right") - 1
        self._local = at - starts[self._shard]
        self._sizes = [tuple(entry["sizes"][r]) for r in rows]
        self._fds: dict[int, int] = {}
        self._pid = -1
        if not self.store.remote:  # a local store without offsets (an older prepare): read them now
            self._offsets = [self._offset(s) for s in range(len(shards))]

    def __len__(self) -> int:
        return len(self._sizes)

    def __getstate__(self) -> dict:  # file descriptors do not travel to spawned processes
        return dict(self.__dict__, _fds={}, _pid=-1)

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # a forked loader worker opens its own
            self._fds, self._pid = {}, os.getpid()
        if shard not in self._fds:
            self._fds[shard] = os.open(self.store.path / self._names[shard], os.O_RDONLY)
        return self._fds[shard]

    def _offset(self, s: int) -> int:
        if self._offsets[s] is None:
            if self.store.remote:
                head = io.BytesIO(self.store.read_range(self._names[s], 0, 4096))
                self._offsets[s] = _data_offset(head, f"{self.store}/{self._names[s]}")
            else:
                path = self.store.path / self._names[s]
                try:
                    with open(path, "rb") as f:
                        self._offsets[s] = _data_offset(f, path)
                except OSError as e:
                    raise StoreError(f"{path} cannot be read ({e}); prepare the store again") from None
        return self._offsets[s]

    def _read(self, s: int, local: int) -> bytes:
        n = self._bytes
        if not self.store.remote:
            return os.pread(self._fd(s), n, self._offsets[s] + local * n)
        name, offset = self._names[s], self._offset(s)
        if self.cache is None:
            return self.store.read_range(name, offset + local * n, n)
        block, within = divmod(local, self._per_block)
        first = block * self._per_block
        count = min(self._per_block, self._counts[s] - first)

        def fetch() -> bytes:
            return self.store.read_range(name, offset + first * n, count * n)

        return self.cache.read(f"{self._keys[s]}-{block}", within * n, n, fetch)

    def item(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        s, local = int(self._shard[i]), int(self._local[i])
        raw = self._read(s, local)
        if len(raw) != self._bytes:
            raise StoreError(f"{self.store}: {self._names[s]} is truncated; prepare the store again")
        pixels = np.frombuffer(raw, dtype=np.uint8).reshape(self.channels, self.size, self.size)
        return pixels, self._sizes[i]  # type: ignore[return-value]


def _data_offset(f, shown) -> int:
    """Where the pixels start in an ``.npy`` file (after its header)."""
    try:
        major, _ = np.lib.format.read_magic(f)
        fmt = np.lib.format
        (fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0)(f)
        return f.tell()
    except ValueError as e:
        raise StoreError(f"{shown} cannot be read ({e}); prepare the store again") from None


def store_size(data: DataConfig) -> int:
    return data.store_size or default_store_size(data.image_size)


def store_cache(data: DataConfig) -> BlockCache | None:
    """The node's cache of stores on object storage (none with ``data.store_cache_gb: 0``)."""
    if not data.store_cache_gb:
        return None
    return BlockCache(data.store_cache or default_cache_folder(), int(data.store_cache_gb * (1 << 30)))


def images_of(data: DataConfig, partition: Partition) -> FileImages | StoreImages:
    """The images of ``partition``: from ``data.store`` when there is one, else from the files."""
    if data.store:
        return StoreImages(data.store, partition, store_cache(data))
    return FileImages(partition, data.channels, store_size(data))


__all__ = ["FileImages", "StoreImages", "images_of", "store_size", "store_cache"]
