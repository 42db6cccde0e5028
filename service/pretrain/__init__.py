"""Pretraining on Ray Train (Train V2): the driver (:mod:`.driver`, ``pretrain``), the worker function
(:mod:`.worker`), what a worker does each step and epoch (:mod:`.epochs`), rank 0's metrics to MLflow
(:mod:`.metrics`) and what a run reads (:mod:`.inputs`)."""

from .driver import PretrainError, PretrainResult, build_trainer, pretrain

__all__ = ["PretrainError", "PretrainResult", "build_trainer", "pretrain"]
