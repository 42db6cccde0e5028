"""What a store says when it cannot be used as asked."""

from __future__ import annotations

from ..errors import UserError


class StoreError(UserError, ValueError):
    """The store cannot be used as asked; the message names the store and what to do."""


__all__ = ["StoreError"]
