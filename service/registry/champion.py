"""The champion rule: when alias ``champion`` of a registered encoder moves to a new version.

A version's score travels in its tags (:data:`TAG_METRIC`, :data:`TAG_VALUE`, :data:`TAG_FINGERPRINT`),
set by :func:`service.registry.models.register_encoder`; :func:`champion_should_move` is the one place
of the rule.
"""

from __future__ import annotations

import math
from typing import Any

CHAMPION = "champion"
TAG_METRIC = "moco.metric"
TAG_VALUE = "moco.value"
TAG_FINGERPRINT = "moco.fingerprint"
TAG_SOURCE_RUN = "moco.source_run_id"
TAG_EPOCH = "moco.epoch"  # the epoch whose encoder the version is
TAG_PUBLISHED = "moco.published"  # best (by the monitor) or last: tracking.publish
TAG_SCORED_ON = "moco.scored_on"  # what the score depends on: images and labels (scoring_fingerprint)


def champion_should_move(current: dict | None, candidate: dict) -> bool:
    """Whether alias ``champion`` moves from ``current`` to ``candidate``.

    Both are ``{"metric": str, "value": float, "fingerprint": str, "scored_on": str | None}``. It moves
    when there is no champion, or when both were scored with the same metric on the same data (the
    training data's fingerprint and, where both versions record it, ``scored_on``: the images and labels
    the score was measured with, val's included) and the candidate scores strictly higher (every metric
    used is higher-is-better: top-1, AUROC). Scores on another metric or other data are not comparable,
    so they never displace a champion; neither does a tie.
    A champion without a usable score (NaN) is displaced by any finite score on the same metric and data.
    """
    if current is None:
        return True
    same_metric = current.get("metric") == candidate.get("metric")
    if not same_metric or current.get("fingerprint") != candidate.get("fingerprint"):
        return False
    if current.get("metric") is None or current.get("fingerprint") is None:
        return False
    if (
        current.get("scored_on")
        and candidate.get("scored_on")
        and current["scored_on"] != candidate["scored_on"]
    ):
        return False  # other labels, or another val partition: not comparable
    try:
        new = float(candidate["value"])
        old = float(current["value"]) if current.get("value") is not None else math.nan
    except (KeyError, TypeError, ValueError):
        return False
    if not math.isfinite(new):
        return False
    if math.isnan(old):
        return True
    return new > old


def version_score(mv: Any) -> dict:
    tags = mv.tags or {}
    value = tags.get(TAG_VALUE)
    try:
        value_f = float(value) if value is not None else None
    except ValueError:
        value_f = None
    return {
        "metric": tags.get(TAG_METRIC),
        "value": value_f,
        "fingerprint": tags.get(TAG_FINGERPRINT),
        "scored_on": tags.get(TAG_SCORED_ON),
    }
