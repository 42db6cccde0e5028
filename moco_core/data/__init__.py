"""The seed dataset format: CSV partitions, label kinds, validation and image decoding.

Layout (kept exactly as the users' existing tooling writes it)::

    root/train/...images...   train.csv      (CSVs in ``root``, or in ``splits_dir`` when given;
    root/val/...images...     val.csv         a relative root or splits_dir is relative to the
    root/test/...images...    test.csv        current directory)

Each CSV has a ``Path`` column: the image path relative to that partition's folder (``a/b.png`` in
``train.csv`` means ``root/train/a/b.png``). Sub-folders are allowed; an absolute path or one that
leaves the partition folder (``../x.png``, ``a/../../x.png``) is a fault. The check is lexical, so a
symlink that the dataset's owner placed inside the folder is followed. A path holding a NUL byte, or a
file or folder name of more than 255 bytes, is a fault too; so is a second row of the same image (the
same path once normalised) with other labels, which names both CSV lines.

Label columns are every other column, or exactly ``label_columns`` when given (``[]``: ignore labels).
The label kind is decided from all partitions read together, so train/val/test agree on it and on the
class indices:

* no label column: ``"none"``.
* several label columns: every value must be 0 or 1 (a fault names row, column and value otherwise).
  ``"multiclass"`` (classes = column names) when every row has exactly one 1 (one-hot), else
  ``"multilabel"``.
* one label column with only 0/1 values: ``"binary"``.
* one label column whose values are all numeric and at least 90 % of them 0/1: still ``"binary"``,
  and every other value is a fault (``label value 2 in binary column Pneumonia``): a stray 2 in a
  Pneumonia column is a data error, not a third class.
* any other single column (ints or strings): ``"multiclass"``, classes = the sorted distinct values
  (integers sorted numerically).

Empty label cells are faults, and so are the missing-value markers ``NA``, ``N/A``, ``#N/A``, ``NaN``
and ``null`` (in any case): a missing label, never a class of its own (a ``NA`` in a 0/1 column would
otherwise make it a three-class column). Every reader collects *all* faults before raising one
``DataError``.
"""

from .faults import DataError, Fault
from .images import decode, load_image, squashed
from .labels import LabelKind
from .partitions import (
    PARTITIONS,
    Partition,
    dataset_fingerprint,
    read_dataset,
    read_partition,
    scoring_fingerprint,
)
from .validate import ValidationReport, validate_dataset

__all__ = [
    "PARTITIONS",
    "Fault",
    "DataError",
    "LabelKind",
    "Partition",
    "read_partition",
    "read_dataset",
    "load_image",
    "decode",
    "squashed",
    "ValidationReport",
    "validate_dataset",
    "dataset_fingerprint",
    "scoring_fingerprint",
]
