"""The prepared store: every image decoded once, at a bounded working resolution, in uint8 shards that
training and evaluation read a sample at a time (see :mod:`.format` for the layout)."""

from .format import StoreError, check_source, default_store_size, read_index
from .location import folder_of, is_remote, redacted
from .partitions import store_partitions
from .prepare import ShardInput, begin, finish, prepare_here, write_shard
from .reader import FileImages, StoreImages, images_of, store_cache, store_size

__all__ = [
    "StoreError",
    "check_source",
    "default_store_size",
    "read_index",
    "folder_of",
    "is_remote",
    "redacted",
    "store_partitions",
    "ShardInput",
    "begin",
    "finish",
    "prepare_here",
    "write_shard",
    "FileImages",
    "StoreImages",
    "images_of",
    "store_size",
    "store_cache",
]
