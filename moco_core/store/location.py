"""Where a store lives: a local folder, or a folder of an object store (``s3://bucket/prefix``,
``gs://bucket/prefix``, any URI ``pyarrow.fs`` opens; ``file://`` too).

Both give the few operations a prepare and a reader need, by file name inside the store. Credentials
come from the environment (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``
for an S3-compatible server, an instance role, ``GOOGLE_APPLICATION_CREDENTIALS``), never from the
URI: a URI that carries them is refused, and every message names the URI with them redacted.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..files import write_atomic
from ..secrets import has_credentials, without_credentials
from .errors import StoreError

_SECRET_PARAMS = {"access_key", "secret_key", "session_token", "credential", "credentials"}
UPLOAD_CHUNK = 8 << 20


def is_remote(store: str | Path) -> bool:
    return "://" in str(store)


def redacted(uri: str) -> str:
    """``uri`` without what a user name, a password or a secret query parameter would give away."""
    parts = urlsplit(without_credentials(uri))
    query = "&".join(
        f"{k}={'***' if k.lower() in _SECRET_PARAMS else v}" for k, v in parse_qsl(parts.query, True)
    )
    return parts._replace(query=query).geturl()


class LocalFolder:
    """A store in a folder of this machine (or one every node mounts)."""

    remote = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    def __str__(self) -> str:
        return str(self.path)

    def read_bytes(self, name: str) -> bytes | None:
        try:
            return (self.path / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"{self.path / name} cannot be read ({e})") from None

    def read_json(self, name: str) -> dict[str, Any] | None:
        path = self.path / name
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise StoreError(f"{path} cannot be read ({e}); remove the store and prepare it again") from None

    def exists(self, name: str) -> bool:
        return (self.path / name).is_file()

    def write_text(self, name: str, text: str) -> None:
        (self.path / name).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path / name, lambda tmp: tmp.write_text(text))

    def scratch(self, name: str) -> Path:
        """Where to write ``name`` before :meth:`put` (beside it: the rename is atomic)."""
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path / f".{name}.tmp{os.getpid()}"

    def put(self, name: str, scratch: Path) -> None:
        os.replace(scratch, self.path / name)

    def remove(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)

    def begin_writing(self) -> None:
        """Ready for a prepare: the folder exists, what a killed writer left half-written is gone."""
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in self.path.glob(".*.tmp*"):
            stale.unlink(missing_ok=True)


class RemoteFolder:
    """A store in an object store, through ``pyarrow.fs`` (as Ray Train persists its checkpoints)."""

    remote = True

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self.shown = redacted(self.uri)
        parts = urlsplit(self.uri)
        if has_credentials(self.uri) or any(k.lower() in _SECRET_PARAMS for k, _ in parse_qsl(parts.query)):
            raise StoreError(
                f"{self.shown}: credentials in a store URI are refused (they would be logged with it); "
                "set them in the environment: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and "
                "AWS_ENDPOINT_URL for an S3-compatible server), or GOOGLE_APPLICATION_CREDENTIALS"
            )
        import pyarrow.fs

        try:
            self.fs, self.base = pyarrow.fs.FileSystem.from_uri(self.uri)
        except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError by scheme
            raise StoreError(f"{self.shown}: cannot open this store location ({_first_line(e)})") from None
        self._files: dict[tuple[int, str], Any] = {}

    def __str__(self) -> str:
        return self.shown

    def _key(self, name: str) -> str:
        return f"{self.base.rstrip('/')}/{name}"

    def _fault(self, what: str, e: BaseException) -> StoreError:
        return StoreError(f"{self.shown}: cannot {what} ({_first_line(e)})")

    def read_bytes(self, name: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(self._key(name)) as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            if "not found" in str(e).lower() or "NoSuchKey" in str(e):
                return None
            raise self._fault(f"read {name}", e) from None

    def read_json(self, name: str) -> dict[str, Any] | None:
        raw = self.read_bytes(name)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise StoreError(f"{self.shown}/{name} cannot be read ({e}); prepare the store again") from None

    def exists(self, name: str) -> bool:
        import pyarrow.fs

        try:
            return self.fs.get_file_info(self._key(name)).type == pyarrow.fs.FileType.File
        except OSError as e:
            raise self._fault(f"look for {name}", e) from None

    def check_reachable(self) -> None:
        """Its bucket is there: an unreachable server, a missing or unauthorised bucket in one line."""
        import pyarrow.fs

        bucket = self.base.split("/", 1)[0]
        if not bucket:  # file:///...: a local path, there is nothing to reach
            return
        try:
            found = self.fs.get_file_info(bucket).type != pyarrow.fs.FileType.NotFound
        except OSError as e:
            hint = "check AWS_ENDPOINT_URL, the network and the credentials"
            raise self._fault(f"reach it ({hint})", e) from None
        if not found:
            raise StoreError(
                f"{self.shown}: the bucket {bucket!r} does not exist, or these credentials cannot see it"
            )

    def write_text(self, name: str, text: str) -> None:
        with self.fs.open_output_stream(self._key(name)) as f:  # an object appears whole, or not at all
            f.write(text.encode())

    def scratch(self, name: str) -> Path:
        return Path(tempfile.gettempdir()) / f"moco-upload-{os.getpid()}-{name}"

    def put(self, name: str, scratch: Path) -> None:
        """Upload ``scratch`` as ``name`` (raises ``OSError``, as a full disk does: the shard is retried
        by the next prepare), then remove it."""
        try:
            with open(scratch, "rb") as src, self.fs.open_output_stream(self._key(name)) as dst:
                while chunk := src.read(UPLOAD_CHUNK):
                    dst.write(chunk)
        finally:
            scratch.unlink(missing_ok=True)

    def remove(self, name: str) -> None:
        try:
            self.fs.delete_file(self._key(name))
        except FileNotFoundError:
            pass
        except OSError as e:
            if "not found" not in str(e).lower():
                raise self._fault(f"remove {name}", e) from None

    def begin_writing(self) -> None:
        self.check_reachable()

    def read_range(self, name: str, offset: int, n: int) -> bytes:
        """``n`` bytes of ``name`` from ``offset`` (one ranged GET); the handle is kept per process."""
        key = (os.getpid(), name)
        try:
            if key not in self._files:
                self._files[key] = self.fs.open_input_file(self._key(name))
            return self._files[key].read_at(n, offset)
        except OSError as e:
            raise self._fault(f"read {name}", e) from None

    def __getstate__(self) -> dict[str, Any]:  # open handles do not travel to other processes
        return dict(self.__dict__, _files={})


def folder_of(store: str | Path | LocalFolder | RemoteFolder) -> LocalFolder | RemoteFolder:
    if isinstance(store, LocalFolder | RemoteFolder):
        return store
    return RemoteFolder(str(store)) if is_remote(store) else LocalFolder(store)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


__all__ = ["is_remote", "redacted", "LocalFolder", "RemoteFolder", "folder_of"]
