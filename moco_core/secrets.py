"""Credentials that must not be repeated: a user and password inside a URI (``scheme://user:pass@host``)
never appear in a message, whatever text the URI was quoted in."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(://)[^/@\s'\"]+@")


def without_credentials(text: str) -> str:
    """``text`` with the user info of every URI in it replaced by ``***``."""
    return _USERINFO.sub(r"\1***@", text)


def has_credentials(uri: str) -> bool:
    """Whether ``uri`` carries a user or password (``scheme://user[:pass]@host``)."""
    return without_credentials(uri) != uri


__all__ = ["without_credentials", "has_credentials"]
