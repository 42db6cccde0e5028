"""A finished run's encoder, published: checkpoint -> encoder package -> run artifacts -> registry."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from moco_core.checkpoint import backbone_from_checkpoint
from moco_core.config import ExperimentConfig
from moco_core.monitor import scored_as

from .. import tracking
from ..lineage import link_metrics
from .champion import TAG_EPOCH, TAG_PUBLISHED
from .models import LOGGED_MODEL_NAME, register_encoder
from .package import write_encoder_package


def publish_encoder(
    cfg: ExperimentConfig,
    state_dict: dict[str, Any],
    run_id: str,
    uri: str,
    metrics: dict[str, Any],
    fingerprint: str,
    epoch: int | None = None,
    chosen: str = "last",
    scored_on: str | None = None,
) -> dict[str, Any] | None:
    """Write the encoder package of checkpoint ``state_dict`` (of ``epoch``, reported with ``metrics``),
    log it to run ``run_id`` and, with ``tracking.register``, register it scored by its first
    ``eval/`` metric (else the negated train loss), the version tagged with its epoch and how it was
    ``chosen`` (``best`` by the monitor, or the ``last``), and what the score was measured on
    (``scored_on``: :func:`~moco_core.data.scoring_fingerprint`). Returns the
    registration (see ``register_encoder``), or ``None`` when not registered."""
    backbone = backbone_from_checkpoint(cfg, state_dict)
    eval_metrics = {k: float(v) for k, v in metrics.items() if k.startswith("eval/")}
    train_loss = float(metrics.get("train/loss", float("nan")))
    with tempfile.TemporaryDirectory() as tmp:
        pkg = write_encoder_package(
            Path(tmp) / "encoder",
            backbone,
            cfg,
            fingerprint=fingerprint,
            run_id=run_id,
            metrics={**eval_metrics, "train/loss": train_loss},
        )
        if not cfg.tracking.register:
            tracking.client(uri).log_artifacts(run_id, str(pkg), LOGGED_MODEL_NAME)
            return None
        metric = next(iter(eval_metrics), "train/neg_loss")
        value = eval_metrics.get(metric, -float(metrics.get("train/loss", float("inf"))))
        registered = register_encoder(
            pkg,
            uri=uri,
            run_id=run_id,
            model_name=cfg.registered_model_name,
            metric=scored_as(cfg, metric),
            value=value,
            fingerprint=fingerprint,
            tags={TAG_EPOCH: str(epoch), TAG_PUBLISHED: chosen} if epoch is not None else None,
            scored_on=scored_on,
        )
    link_metrics(uri, run_id, registered["model_id"], metrics, cfg, fingerprint)
    return registered


__all__ = ["publish_encoder"]
