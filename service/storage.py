"""Small files under ``run.storage_path``, which is a local folder or a URI (``s3://``, ``gs://``,
``file://``): the run records that ``--resume`` reads.

Ray Train persists checkpoints under the same path through ``pyarrow.fs``; this module uses the same
file systems, so a run on a cluster keeps its record beside its checkpoints on shared storage (never on
one worker's local disk). S3-compatible stores (MinIO) are reached with the usual ``AWS_*`` variables,
``AWS_ENDPOINT_URL`` included.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from moco_core.errors import UserError
from moco_core.files import write_atomic


class StorageError(UserError, RuntimeError):
    """``run.storage_path`` cannot be used; the message names the path."""


def is_uri(path: str) -> bool:
    return "://" in str(path)


def absolute(where: str | Path) -> str:
    """A folder made absolute (workers run elsewhere); a URI as it is."""
    return str(where) if is_uri(str(where)) else str(Path(where).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a folder or a URI (a URI's query string, if any, stays at the end)."""
    base = str(base)
    if not is_uri(base):
        return str(Path(base, *parts))
    head, sep, query = base.partition("?")
    return "/".join([head.rstrip("/"), *(p.strip("/") for p in parts)]) + (sep + query if sep else "")


def _fs(uri: str):
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError by scheme
        raise StorageError(
            f"run.storage_path: cannot open {uri}: {e}. Use a local folder, an NFS path every node mounts, "
            "or an s3:// / gs:// URI (credentials from the usual AWS_* / GOOGLE_* variables)"
        ) from None


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` (parent folders created); atomic for local folders."""
    if not is_uri(path):
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(Path(path), lambda tmp: tmp.write_text(text))
        except OSError as e:  # a full disk, a read-only mount: the old file (if any) is left whole
            raise StorageError(f"cannot write {path}: {e.strerror or e}") from None
        return
    fs, inner = _fs(path)
    try:
        fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(inner) as f:  # object stores replace an object atomically
            f.write(text.encode())
    except OSError as e:
        raise StorageError(f"cannot write {path}: {e}") from None


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` (parent folders created); atomic for local folders."""
    if not is_uri(path):
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(Path(path), lambda tmp: tmp.write_bytes(data))
        except OSError as e:
            raise StorageError(f"cannot write {path}: {e.strerror or e}") from None
        return
    fs, inner = _fs(path)
    try:
        fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(inner) as f:
            f.write(data)
    except OSError as e:
        raise StorageError(f"cannot write {path}: {e}") from None


def read_text(path: str) -> str:
    if not is_uri(path):
        return Path(path).read_text()
    fs, inner = _fs(path)
    try:
        with fs.open_input_stream(inner) as f:
            return f.read().decode()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e}") from None


def exists(path: str) -> bool:
    if not is_uri(path):
        return Path(path).exists()
    import pyarrow.fs

    fs, inner = _fs(path)
    return fs.get_file_info(inner).type != pyarrow.fs.FileType.NotFound


def check_writable(folder: str) -> None:
    """Write and remove a small file in ``folder`` (created if missing): a full disk, a read-only mount
    or missing permissions on ``run.storage_path`` are a :class:`StorageError` before anything starts."""
    probe = join(folder, f".moco-write-check-{os.getpid()}")
    if not is_uri(probe):
        made = [p for p in (Path(folder), *Path(folder).parents) if not p.exists()]
        try:
            write_text(probe, "moco\n")  # a byte or more: an empty file needs no space
        finally:
            Path(probe).unlink(missing_ok=True)
            for p in made:  # deepest first: the check leaves no folder behind
                with contextlib.suppress(OSError):
                    p.rmdir()
        return
    write_text(probe, "moco\n")
    fs, inner = _fs(probe)
    try:
        fs.delete_file(inner)
    except OSError as e:
        raise StorageError(f"cannot remove {probe}: {e}") from None


def make_dir_exclusive(path: str) -> bool:
    """Create folder ``path`` (parents included); ``False`` when it exists already. Exclusive on a file
    system (one of two concurrent callers gets ``False``); object storage has no exclusive create, so
    there it only checks first."""
    if not is_uri(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            Path(path).mkdir()
        except FileExistsError:
            return False
        return True
    if exists(path):
        return False
    fs, inner = _fs(path)
    try:
        fs.create_dir(inner, recursive=True)
    except OSError as e:
        raise StorageError(f"cannot create {path}: {e}") from None
    return True


def list_dirs(path: str) -> list[str]:
    """Names of the folders directly under ``path`` (none when ``path`` does not exist)."""
    if not is_uri(path):
        p = Path(path)
        return sorted(c.name for c in p.iterdir() if c.is_dir()) if p.is_dir() else []
    import pyarrow.fs

    fs, inner = _fs(path)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(inner, allow_not_found=True))
    except OSError as e:
        raise StorageError(f"cannot list {path}: {e}") from None
    return sorted(i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory)


__all__ = [
    "StorageError",
    "write_atomic",
    "is_uri",
    "absolute",
    "join",
    "write_text",
    "write_bytes",
    "read_text",
    "exists",
    "make_dir_exclusive",
    "check_writable",
    "list_dirs",
]
