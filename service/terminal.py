"""What the terminal shows: our own lines (progress, results, where to look), other tools' warnings
and errors, and their informational lines only with ``moco -v``.

Set through the knobs the tools offer: MLflow's logging level and artifact progress bars (environment
variables, so that Ray workers started from here inherit them), Ray's logging level at ``ray.init``
and Ray Train's ``LoggingConfig`` (:mod:`.ray_cluster`).
"""

from __future__ import annotations

import logging
import os
import sys


def quiet_other_tools(verbose: bool) -> None:
    """Other tools' INFO lines off unless ``verbose``; what the user already set is kept."""
    if verbose:
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # e.g. "Creating initial MLflow database tables"
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # "Downloading artifacts: 100%"
    # Ray Tune's newer output prints its configuration box, "View detailed results here" and a
    # TensorBoard hint even at RunConfig(verbose=0); its classic reporter is silent at 0
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if "mlflow" in sys.modules:  # imported already: its loggers read the level at import
        logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"])


__all__ = ["quiet_other_tools"]
