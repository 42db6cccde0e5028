"""Placeholder: the `moco` commands of this module are being built."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the `moco` parser (none yet)."""
