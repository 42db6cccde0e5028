"""Ray Tune sweeps over MoCo's temperature T, queue size K and momentum m (and the learning rate).

:mod:`.driver` (``tune_sweep``), :mod:`.space` (metric, parameter space, concurrency), :mod:`.trial`
(one trial in a Tune actor), :mod:`.progress` (a line per trial event), :mod:`.report` (the trials,
ranked, and the summary), :mod:`.finish` (the MLflow runs closed, the best encoder registered) and
:mod:`.plots`.
"""

from .driver import SweepResult, tune_sweep
from .space import SweepError

__all__ = ["SweepError", "SweepResult", "tune_sweep"]
