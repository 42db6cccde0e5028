"""Registered encoders in MLflow: a new version per finished run, scored, and the champion alias.

``register_encoder`` puts a package into MLflow twice over: as the run's ``encoder/`` artifacts and as
a LoggedModel (``pt2`` / ``torch.export``, no pickle) that becomes a new version of a registered model,
with the package in the model's ``extra_files/``. The version carries its score in tags; alias
``champion`` follows :func:`~service.registry.champion.champion_should_move`.

Registering is idempotent per run (a publish retried after a failure finds the run's version and
registers no second one), and the alias converges: after moving it, the registry is read again and the
alias repaired to the best version comparable with the champion, so concurrent registrations, each
deciding on what it read, cannot leave a worse version as champion.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import tracking
from .champion import (
    CHAMPION,
    TAG_FINGERPRINT,
    TAG_METRIC,
    TAG_SCORED_ON,
    TAG_SOURCE_RUN,
    TAG_VALUE,
    champion_should_move,
    version_score,
)
from .package import ENCODER_JSON, WEIGHTS, EncoderError, package_dir, read_encoder_package

LOGGED_MODEL_NAME = "encoder"  # LoggedModel name and run artifact folder


def register_encoder(
    package: str | Path,
    *,
    run_id: str,
    model_name: str,
    metric: str,
    value: float,
    fingerprint: str,
    uri: str | None = None,
    input_example_size: tuple[int, int, int] | None = None,
    tags: dict[str, str] | None = None,
    scored_on: str | None = None,
) -> dict[str, Any]:
    """Log the package to run ``run_id`` of the store at ``uri`` (default: the project's) and register it
    as a new version of ``model_name``, scored ``metric = value`` on data ``fingerprint`` (and tagged
    ``tags`` besides); alias
    ``champion`` moves to it iff the champion rule says so.

    Returns ``{"name", "version", "champion", "previous_champion", "model_uri", "model_id"}`` (the
    version's LoggedModel).
    """
    uri = tracking.resolve_tracking_uri(None) if uri is None else uri  # a run's own store beats the env
    client = tracking.client(uri)
    folder = package_dir(Path(package))
    backbone, meta = read_encoder_package(folder)
    try:
        run = client.get_run(run_id)
    except tracking.mlflow_errors() as e:
        raise EncoderError(f"cannot register the encoder: run {run_id!r} not found ({e.message})") from None
    tags = {
        **(tags or {}),
        TAG_METRIC: metric,
        TAG_VALUE: repr(float(value)),
        TAG_FINGERPRINT: fingerprint,
        TAG_SOURCE_RUN: run_id,
        **({TAG_SCORED_ON: scored_on} if scored_on else {}),
    }

    for f in (ENCODER_JSON, WEIGHTS):  # the run's artifacts encoder/weights.pt, encoder/encoder.json
        client.log_artifact(run_id, str(folder / f), LOGGED_MODEL_NAME)
    existing = version_of_run(client, model_name, run_id)  # a retried publish: no second version
    if existing is not None:
        version, model_id = int(existing.version), existing.model_id
    else:
        version, model_id = _log_version(
            uri, run, backbone, meta, folder, model_name, tags, input_example_size
        )
    _tag_version(client, model_name, version, tags)  # its score, which the champion rule reads
    champion, previous = _move_champion(client, model_name, version)
    return {
        "name": model_name,
        "version": version,
        "champion": champion == version,
        "previous_champion": previous,
        "model_uri": f"models:/{model_name}/{version}",
        "model_id": model_id,
    }


def _log_version(
    uri: str,
    run: Any,
    backbone: nn.Module,
    meta: dict[str, Any],
    folder: Path,
    model_name: str,
    tags: dict[str, str],
    input_example_size: tuple[int, int, int] | None,
) -> tuple[int, str]:
    """A ``pt2`` LoggedModel attached to ``run``, registered as a new version of ``model_name``;
    returns the version and the LoggedModel's id.

    The LoggedModel is created here, in the run's experiment, so that no fluent run state (global,
    thread-local) is touched; only ``log_model`` itself needs the fluent tracking URI.
    """
    import mlflow
    import numpy as np

    run_id = run.info.run_id
    size = int(meta["image_size"])
    c, s1, s2 = input_example_size or (int(meta["in_channels"]), size, size)
    # traced, never evaluated for its values (zeros keep its JSON small); batch 2 keeps the batch dim dynamic
    example = np.zeros((2, c, s1, s2), dtype=np.float32)
    client = tracking.client(uri)
    logged = client.create_logged_model(
        experiment_id=run.info.experiment_id,
        name=LOGGED_MODEL_NAME,
        source_run_id=run_id,
        params={k: str(meta[k]) for k in ("arch", "in_channels", "small_image_stem", "image_size")},
        model_type="moco-encoder",
    )
    try:
        with tracking.fluent_uri(uri):
            info = mlflow.pytorch.log_model(
                backbone,
                name=LOGGED_MODEL_NAME,
                model_id=logged.model_id,
                run_id=run_id,
                serialization_format="pt2",
                input_example=example,
                extra_files=[str(folder / WEIGHTS), str(folder / ENCODER_JSON)],
                pip_requirements=[
                    f"torch=={torch.__version__.split('+')[0]}",
                    f"mlflow=={mlflow.__version__}",
                ],
                tags=tags,  # on the LoggedModel
                # MLflow would reload the model through pyfunc only to *warn* on failure (~2 s); the
                # tests load every registered version with mlflow.pytorch.load_model instead.
                validate_serving_input=False,
            )
    except Exception as e:
        raise EncoderError(
            f"logging the encoder of run {run_id} as an MLflow 'pt2' (torch.export) model failed, so it was "
            f"not registered as {model_name!r} (no pickle fallback): {type(e).__name__}: {e}"
        ) from e
    # registered through the client, as mlflow.register_model would, without its lines on stderr; the
    # registry finds the LoggedModel of a models:/ source through the global tracking URI
    try:
        client.create_registered_model(model_name)
    except tracking.mlflow_errors() as e:
        if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    with tracking.fluent_uri(uri):
        mv = client.create_model_version(
            model_name, source=info.model_uri, run_id=run_id, tags=tags, model_id=info.model_id
        )
    return int(mv.version), info.model_id


def _tag_version(client: Any, model_name: str, version: int, tags: dict[str, str]) -> None:
    """The score tags on the version (where the registration did not set them already)."""
    mv = client.get_model_version(model_name, str(version))
    for key, val in tags.items():
        if (mv.tags or {}).get(key) != val:
            client.set_model_version_tag(model_name, str(version), key, val)


def _move_champion(client: Any, model_name: str, version: int) -> tuple[int | None, int | None]:
    """Alias ``champion`` after ``version`` (its score in its tags) was registered: on ``version`` where
    there is no champion (or the alias names a deleted version), then repaired to the best version
    comparable with the champion (:func:`repair_champion`), which moves it to ``version`` when it beats
    the champion. Returns ``(champion, previous)``."""
    rm = client.get_registered_model(model_name)
    previous = int(rm.aliases[CHAMPION]) if CHAMPION in (rm.aliases or {}) else None
    try:
        alive = previous is not None and client.get_model_version(model_name, str(previous)) is not None
    except tracking.mlflow_errors():  # the alias points at a deleted version: no champion to beat
        alive = False
    if not alive:
        set_champion(client, model_name, version)
    return repair_champion(client, model_name), previous


def set_champion(client: Any, model_name: str, version: int, tries: int = 5) -> None:
    """Point alias ``champion`` at ``version``. Two concurrent writes of the alias can collide in the
    store (a unique-key violation on a SQL backend): retried, as the other write is done by then."""
    for attempt in range(tries):
        try:
            client.set_registered_model_alias(model_name, CHAMPION, str(version))
            return
        except tracking.mlflow_errors():
            if attempt == tries - 1:
                raise
            time.sleep(0.1 * (attempt + 1))


def version_of_run(client: Any, model_name: str, run_id: str) -> Any | None:
    """The version of ``model_name`` registered from run ``run_id`` (the first, should there be more),
    or ``None``."""
    try:
        client.get_registered_model(model_name)
    except tracking.mlflow_errors():
        return None
    mine = [mv for mv in all_versions(client, model_name) if mv.run_id == run_id]
    return min(mine, key=lambda mv: int(mv.version), default=None)


def repair_champion(client: Any, model_name: str) -> int | None:
    """Read the versions again and point alias ``champion`` at the best one comparable with the current
    champion (same metric, same data; the older of a tie), repairing a move made on a stale read;
    returns the champion's version."""
    rm = client.get_registered_model(model_name)
    if CHAMPION not in (rm.aliases or {}):
        return None
    current = int(rm.aliases[CHAMPION])
    versions = {int(mv.version): version_score(mv) for mv in all_versions(client, model_name)}
    if current not in versions:  # deleted since: the next registration elects a champion
        return current
    best = current
    for version in sorted(versions):  # ascending: a tie keeps the older version
        if champion_should_move(versions[best], versions[version]):
            best = version
    if best != current:
        set_champion(client, model_name, best)
    return best


def all_versions(client: Any, name: str) -> list:
    """Every version of registered model ``name`` (all pages)."""
    escaped = name.replace("'", "\\'")
    out, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{escaped}'", max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def list_encoders(uri: str | None = None) -> list[dict]:
    """Registered models holding encoders (name ``moco-*``, or a version tagged by
    :func:`register_encoder`) in the store at ``uri`` (default: the project's):
    ``[{"name", "aliases": {alias: version}, "versions": [{"version", "run_id", "metric", "value",
    "fingerprint", "creation_time" (ms since epoch), "aliases"}]}]``, sorted by name and version."""
    client = tracking.client(tracking.resolve_tracking_uri(uri))
    models, token = [], None
    while True:
        page = client.search_registered_models(max_results=1000, page_token=token)
        models.extend(page)
        token = page.token
        if not token:
            break
    out = []
    for rm in sorted(models, key=lambda m: m.name):
        versions = all_versions(client, rm.name)
        if not rm.name.startswith("moco-") and not any(TAG_METRIC in (v.tags or {}) for v in versions):
            continue
        aliases = {a: int(v) for a, v in (rm.aliases or {}).items()}
        rows = []
        for mv in sorted(versions, key=lambda v: int(v.version)):
            score = version_score(mv)
            rows.append(
                {
                    "version": int(mv.version),
                    "run_id": (mv.tags or {}).get(TAG_SOURCE_RUN) or mv.run_id,
                    "metric": score["metric"],
                    "value": score["value"],
                    "fingerprint": score["fingerprint"],
                    "creation_time": mv.creation_timestamp,
                    "aliases": sorted(a for a, v in aliases.items() if v == int(mv.version)),
                }
            )
        out.append({"name": rm.name, "aliases": aliases, "versions": rows})
    return out


__all__ = [
    "LOGGED_MODEL_NAME",
    "register_encoder",
    "list_encoders",
    "all_versions",
    "version_of_run",
    "repair_champion",
]
