"""What an encoder is worth downstream: frozen features, kNN, linear probe and fine-tune, at label
fractions, scored on test.

What an encoder is worth is what it does with few labels downstream. One module per concept:
:mod:`.features`, :mod:`.metrics`, :mod:`.knn`, :mod:`.heads` (with :mod:`.linear_probe` and
:mod:`.finetune`), :mod:`.task` (the labelled partitions and their checks), :mod:`.fractions` and
:mod:`.protocols`. The names users need are re-exported here.
"""

from .features import extract_features
from .finetune import finetune
from .fractions import label_subset
from .heads import FinetuneConfig, HeadResult, LinearProbeConfig, num_outputs
from .knn import knn_metric, knn_scores, nearest_neighbours, vote_targets
from .linear_probe import linear_probe
from .metrics import (
    auroc,
    bootstrap_ci,
    leave_one_out_auroc,
    mean_auroc,
    metric_name,
    per_label_auroc,
    roc_curve,
    task_score,
    top1,
)
from .protocols import ProtocolResult, ProtocolSettings, encode, run_protocols
from .task import PROTOCOLS, EvaluationError, Task, check_channels, check_labels

__all__ = [
    "extract_features",
    "finetune",
    "label_subset",
    "FinetuneConfig",
    "HeadResult",
    "LinearProbeConfig",
    "num_outputs",
    "vote_targets",
    "knn_metric",
    "knn_scores",
    "nearest_neighbours",
    "linear_probe",
    "auroc",
    "bootstrap_ci",
    "leave_one_out_auroc",
    "mean_auroc",
    "metric_name",
    "per_label_auroc",
    "roc_curve",
    "task_score",
    "top1",
    "ProtocolResult",
    "ProtocolSettings",
    "encode",
    "run_protocols",
    "PROTOCOLS",
    "EvaluationError",
    "Task",
    "check_channels",
    "check_labels",
]
