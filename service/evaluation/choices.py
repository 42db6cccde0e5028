"""What ``moco evaluate`` offers, as plain names (``moco evaluate --help`` reads them without torch)."""

from __future__ import annotations

BASELINES = ("random",)
DEFAULT_PROTOCOLS = ("knn", "linear")
PROTOCOL_METAVAR = "{knn,linear,finetune,lincls}"  # checked by moco_core.eval.check_labels
JSON_NAME = "evaluation.json"

__all__ = ["BASELINES", "DEFAULT_PROTOCOLS", "PROTOCOL_METAVAR", "JSON_NAME"]
