"""A fault of the dataset (partition, CSV line, file, what is wrong) and the error that lists them all."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class Fault:
    """One problem with the dataset, located as precisely as possible."""

    partition: str  # "train", "val", "test"; "" when unknown (load_image on a bare path)
    row: int | None  # CSV line number (the header is line 1)
    file: str | None  # "train/a/b.png" (partition folder + CSV Path) or a bare path
    message: str

    def __str__(self) -> str:
        loc = f"{self.partition}.csv" if self.partition else ""
        if self.row is not None:
            loc += f" line {self.row}"
        if self.file:
            loc = f"{loc} ({self.file})" if loc else self.file
        return f"{loc}: {self.message}" if loc else self.message


class DataError(UserError, ValueError):
    """The dataset cannot be used; ``str()`` lists every fault, one per line."""

    def __init__(self, faults: Sequence[Fault], header: str | None = None) -> None:
        self.faults = list(faults)
        self.header = header
        n = len(self.faults)
        head = header or f"{n} problem{'s' if n != 1 else ''} with the dataset"
        super().__init__("\n".join([head + ":"] + [f"  {f}" for f in self.faults]))

    def __reduce__(self):  # picklable (Ray ships exceptions between processes)
        return (DataError, (self.faults, self.header))


__all__ = ["Fault", "DataError"]
