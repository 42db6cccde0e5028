"""The one base of every error meant for a person rather than a programmer.

A ``UserError`` says what was wrong, where (file, row, key) and what to do; the ``moco`` command prints
it as ``error: ...`` and exits 1. Every other exception is a bug and keeps its traceback. Each error
lives beside its concept (``ConfigError`` in :mod:`moco_core.config`, ``DataError`` in
:mod:`moco_core.data`, ...) and subclasses this one, so no module has to know them all.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure whose message already tells the user what was wrong and what to do."""


__all__ = ["UserError"]
