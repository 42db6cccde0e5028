"""What a worker does at each step and at each epoch's end: log (rank 0), show progress (rank 0),
measure the kNN monitor (every rank its share), checkpoint (rank 0) and report to Ray Train (every
rank)."""

from __future__ import annotations

import tempfile
import time
from typing import Any

import torch

from moco_core.checkpoint import save_checkpoint
from moco_core.config import ExperimentConfig
from moco_core.data import Partition
from moco_core.engine import TrainState
from moco_core.monitor import KnnMonitor, can_monitor

from ..progress import ProgressSender
from .metrics import MetricLogger

# reported with every checkpoint: the monitor's value measured at it (a kNN top-1 or AUROC, in [0, 1]),
# UNMEASURED where it was not (mid-epoch, no labelled val), so Ray Train keeps the best checkpoints
# besides the latest one. Finite: Ray Train's snapshot, read back on a resume, keeps no NaN.
SCORE_KEY = "monitor_score"
UNMEASURED = -1.0


class EpochHooks:
    """The ``on_step`` / ``on_epoch_end`` hooks of ``engine.fit`` on one worker."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        state: TrainState,
        parts: dict[str, Partition],
        loop_config: dict[str, Any],
        rank: int,
        world: int,
        device: torch.device,
    ) -> None:
        self.cfg, self.state, self.device, self.rank0 = cfg, state, device, rank == 0
        self.total_steps = cfg.optim.epochs * state.steps_per_epoch
        self.t_start, self.step_start = time.monotonic(), state.step
        self.metrics: MetricLogger | None = None
        self.progress: ProgressSender | None = None
        monitor_parts = {"train": parts["train"], "val": parts.get("val")}
        self.monitor = KnnMonitor(cfg, monitor_parts, rank, world) if can_monitor(monitor_parts) else None
        if self.rank0:
            self.metrics = MetricLogger(loop_config["tracking_uri"], loop_config["mlflow_run_id"])
            self.progress = ProgressSender(loop_config.get("progress_queue"))

    def resumed(self) -> None:
        """Visible in the MLflow UI: the step where a restart resumed."""
        if self.metrics is not None:
            self.metrics.log({"train/resumed_at_step": self.state.step}, step=self.state.step)

    def on_step(self, m: dict[str, float]) -> None:
        step = self.state.step
        if self.metrics is not None:
            self.metrics.log({k: v for k, v in m.items() if k.startswith("train/")}, step=step)
        if self.progress is not None:
            done = step - self.step_start
            eta = (time.monotonic() - self.t_start) / max(done, 1) * (self.total_steps - step)
            self.progress.send(
                {**m, "epochs": self.cfg.optim.epochs, "total_steps": self.total_steps, "eta_s": eta}
            )
        every, spe = self.cfg.run.checkpoint_every_steps, self.state.steps_per_epoch
        if every and step % every == 0 and step % spe:  # within an epoch (its end checkpoints anyway)
            if self.metrics is not None:
                self.metrics.flush()
            report = {k: v for k, v in m.items() if k.startswith("train/")}
            self.checkpoint({**report, "epoch": self.state.epoch, "step": step}, f"step_{step:09d}")

    def on_epoch_end(self, st: TrainState, epoch_metrics: dict[str, float]) -> None:
        import ray.train

        cfg = self.cfg
        report = {k: v for k, v in epoch_metrics.items() if k.startswith("train/")}
        report.update(epoch=st.epoch, step=st.step)
        final = st.epoch >= cfg.optim.epochs
        knn_due = cfg.eval.knn_every_epochs and st.epoch % cfg.eval.knn_every_epochs == 0
        if self.monitor is not None and (knn_due or final):  # every rank: it gathers their features
            encoder = st.model.encoder_q if cfg.eval.knn_features == "head" else st.model.encoder_q.backbone
            measured = self.monitor.measure(encoder, self.device)
            report.update(measured, **{SCORE_KEY: next(iter(measured.values()))})
        if self.metrics is not None:
            self.metrics.log({k: v for k, v in report.items() if k.startswith("eval/")}, step=st.step)
            self.metrics.log({"train/epoch_loss": report["train/loss"]}, step=st.step)
            self.metrics.flush()  # before the checkpoint: a restart skips what is already logged
        if self.progress is not None:
            self.progress.send(
                {
                    **report,
                    "kind": "epoch",
                    "epoch": st.epoch - 1,
                    "epochs": cfg.optim.epochs,
                    "total_steps": self.total_steps,
                },
                force=True,
            )
        if not (final or st.epoch % cfg.run.checkpoint_every_epochs == 0):
            ray.train.report(report)
            return
        self.checkpoint(report, f"epoch_{st.epoch:05d}")

    def checkpoint(self, report: dict[str, Any], name: str) -> None:
        """Report ``report`` with a checkpoint of the state (every rank reports; rank 0 writes it: every
        rank holds the same state)."""
        import ray.train

        report = {SCORE_KEY: UNMEASURED, **report}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if self.rank0:
                save_checkpoint(self.state, tmp)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(report, checkpoint=checkpoint, checkpoint_dir_name=name)

    def close(self) -> bool:
        """Send what is left; ``False`` when some metrics could not be sent."""
        return self.metrics is None or self.metrics.close()


__all__ = ["EpochHooks", "SCORE_KEY", "UNMEASURED"]
