"""One line per trial event on stderr while a sweep runs (Tune's own status table is off)."""

from __future__ import annotations

import sys
from typing import Any

from ray.tune import Callback

from .report import format_values


class SweepProgress(Callback):
    """One line per trial event on stderr (Tune's own status table is off)."""

    def __init__(self, epochs: int, keys: list[str], metric: str, asha: bool = True) -> None:
        self.epochs, self.keys, self.metric, self.asha = epochs, keys, metric, asha

    @staticmethod
    def _say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(f"trial {trial.trial_id} started: {format_values(trial.config, self.keys)}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.metric in result and "epoch" in result:
            show_loss = "train/loss" in result and self.metric != "train/loss"
            loss = f"  train/loss {result['train/loss']:.4f}" if show_loss else ""
            self._say(
                f"trial {trial.trial_id} epoch {result['epoch']}/{self.epochs}: "
                f"{self.metric} {result[self.metric]:.4f}{loss}"
            )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epoch = (trial.last_result or {}).get("epoch", 0)
        by = " by ASHA" if self.asha else ""
        how = "finished" if epoch >= self.epochs else f"stopped early{by} after epoch {epoch}"
        self._say(f"trial {trial.trial_id} {how}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(f"trial {trial.trial_id} failed; its error is under {trial.path}")


__all__ = ["SweepProgress"]
