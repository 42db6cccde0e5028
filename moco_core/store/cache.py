"""A node's local copy of what it read from a store on object storage: blocks of shards, on disk, at
most ``max_bytes`` together, the least recently used evicted to make room.

Every process of a node (Ray workers, their loader workers) shares one cache folder: a block is
written under a temporary name and renamed, so a reader sees it whole or not at all, and a block
removed by another process while it is read stays readable to that reader. A full disk, or a block
larger than the whole cache, evicts what it can and serves the block from memory: a read never fails
because of the cache. The bound holds for what is at rest; processes fetching at the same moment
may each add a block beyond it until their next eviction.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from ..files import write_atomic

TOUCH_EVERY_S = 30.0  # a block read again is marked recently used at most this often
STALE_S = 600.0  # a temporary file this old was left by a killed writer


def default_cache_folder() -> Path:
    """``$XDG_CACHE_HOME/moco/stores`` (``~/.cache/moco/stores``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "moco" / "stores"


class BlockCache:
    def __init__(self, folder: str | Path, max_bytes: int) -> None:
        self.folder, self.max_bytes = Path(folder), int(max_bytes)

    def read(self, key: str, start: int, n: int, fetch: Callable[[], bytes]) -> bytes:
        """``n`` bytes from ``start`` of block ``key``: from the cache, or ``fetch()``-ed and kept."""
        path = self.folder / key
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            block = fetch()
            self._keep(path, block)
            return block[start : start + n]
        try:
            data, mtime = os.pread(fd, n, start), os.fstat(fd).st_mtime
        finally:
            os.close(fd)
        if len(data) != n:  # cut short by something outside this cache: fetch it again
            path.unlink(missing_ok=True)
            return self.read(key, start, n, fetch)
        if time.time() - mtime > TOUCH_EVERY_S:
            try:
                os.utime(path)
            except FileNotFoundError:
                pass  # evicted meanwhile by another process
        return data

    def used(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def _entries(self) -> list[tuple[float, int, Path]]:
        out = []
        try:
            with os.scandir(self.folder) as it:
                for e in it:
                    try:
                        if not e.is_file():
                            continue
                        st = e.stat()
                        if not e.name.startswith("."):
                            out.append((st.st_mtime, st.st_size, Path(e.path)))
                        elif time.time() - st.st_mtime > STALE_S:
                            os.unlink(e.path)
                    except FileNotFoundError:
                        continue
        except FileNotFoundError:
            pass
        return out

    def _evict(self, room: int) -> None:
        """Remove the least recently used blocks until ``room`` more bytes fit under the bound."""
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total + room <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size

    def _keep(self, path: Path, block: bytes) -> None:
        if len(block) > self.max_bytes:
            return  # served from memory: the cache could not hold it
        for attempt in range(2):
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._evict(len(block) * (1 + attempt * 8))  # after a full disk: more room
                write_atomic(path, lambda tmp: tmp.write_bytes(block))
                return
            except OSError:
                continue  # a full (or read-only) disk: served from memory


__all__ = ["BlockCache", "default_cache_folder"]
