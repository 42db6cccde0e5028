"""Writing a file so that no reader ever sees half of it."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` a file beside ``path``, then rename it over ``path``: a reader sees the old file
    or the new one, never half of one (and a crash leaves no partial file behind)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{threading.get_ident()}")  # per writer thread
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["write_atomic"]
