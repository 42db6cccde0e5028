"""``model.init`` resolved on the driver, before Ray starts: to a state_dict file every worker reads.

moco_core loads a state_dict file only (:func:`moco_core.backbones.initial_backbone`); an encoder
reference needs MLflow, so it is resolved here:

* ``random``: nothing to do;
* a state_dict file (a local path, or a ``file://`` / ``s3://`` / ``gs://`` URI): checked, made absolute;
* an encoder package folder (``encoder.json`` and ``weights.pt``): its ``weights.pt``;
* ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID`` or a run id: downloaded, and its
  ``weights.pt`` copied to ``<run.storage_path>/inits/<sha256>.pt``, where the workers find it (the same
  machine, or every node of a cluster whose storage path is shared storage).

The file found is set as ``model.init_resolved`` (``model.init`` stays as given, so the run's params and
its encoder package show both), after it was loaded into a fresh backbone of the config: a missing
file, pickled objects, another arch or wrongly shaped weights fail here, naming ``model.init`` and the
file.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path

from moco_core.backbones import RANDOM, backbone_for, load_init
from moco_core.config import ConfigError, ExperimentConfig

from .. import storage, tracking
from ..records import storage_path_of
from .package import WEIGHTS, EncoderError, read_encoder_meta
from .refs import is_local_ref, resolve_ref

INITS = "inits"  # under run.storage_path: the weights of encoder references, by content
_RUN_ID = re.compile(r"[0-9a-f]{32}")


def resolve_init(
    cfg: ExperimentConfig, tmp_dir: str | Path | None = None, uri: str | None = None
) -> ExperimentConfig:
    """``cfg`` with ``model.init_resolved`` set to the state_dict file ``model.init`` names (``None`` for
    ``random``), checked by loading it into a fresh backbone of ``cfg``. An encoder reference is looked
    up in the MLflow store at ``uri`` (default: ``tracking.uri`` of ``cfg``, or the environment's),
    downloaded into ``tmp_dir`` (default: a temporary folder) and its weights copied under
    ``run.storage_path``. Raises :class:`~moco_core.config.ConfigError` naming ``model.init``."""
    given = cfg.model.init.strip()
    if given == RANDOM:
        return _with_resolved(cfg, None)
    if _is_mlflow_ref(given):
        if tmp_dir is not None:
            Path(tmp_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="moco-init-", dir=tmp_dir) as tmp:
            folder = _resolved(given, tmp, uri or tracking.resolve_tracking_uri(cfg.tracking.uri))
            weights = _package_weights(cfg, given, folder)
            return _with_resolved(cfg, _stored_copy(cfg, weights))
    if storage.is_uri(given):  # a state_dict file on shared storage: every worker reads it there
        load_init(backbone_for(cfg), given, cfg)
        return _with_resolved(cfg, given)
    local = Path(given).expanduser()
    if is_local_ref(given) and local.is_dir():  # an encoder package folder
        weights = _package_weights(cfg, given, _resolved(given))
    elif local.is_file():
        weights = local.resolve()
        load_init(backbone_for(cfg), str(weights), cfg)
    else:
        raise ConfigError(
            f"model.init: {given} is not an existing file or folder, nor an encoder reference: use random, "
            "a state_dict file (torch.save(backbone.state_dict(), FILE)), an encoder package folder, "
            "models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID"
        )
    if storage.is_uri(storage_path_of(cfg)):  # the workers may be on other nodes: put it beside the runs
        return _with_resolved(cfg, _stored_copy(cfg, weights))
    return _with_resolved(cfg, str(weights))


def _resolved(ref: str, tmp: str | None = None, uri: str | None = None) -> Path:
    """The package folder of an encoder reference (see :func:`~service.registry.refs.resolve_ref`)."""
    try:
        return resolve_ref(ref, tmp, uri)
    except EncoderError as e:
        raise ConfigError(f"model.init: {e}") from None


def _is_mlflow_ref(ref: str) -> bool:
    return ref.startswith(("models:/", "runs:/")) or (
        _RUN_ID.fullmatch(ref) is not None and not Path(ref).exists()
    )


def _package_weights(cfg: ExperimentConfig, given: str, folder: Path) -> Path:
    """The ``weights.pt`` of the encoder package in ``folder``, once its ``encoder.json`` says it is the
    backbone ``cfg`` describes and its weights load into one."""
    try:
        meta = read_encoder_meta(folder)
    except EncoderError as e:
        raise ConfigError(f"model.init: {given}: {e}") from None
    m = cfg.model
    theirs = (meta["arch"], int(meta["in_channels"]), bool(meta["small_image_stem"]))
    ours = (m.arch, cfg.data.channels, m.small_image_stem)
    if theirs != ours:
        raise ConfigError(
            f"model.init: {given} is an encoder of arch={theirs[0]}, in_channels={theirs[1]}, "
            f"small_image_stem={theirs[2]}; this experiment has model.arch={ours[0]}, "
            f"data.channels={ours[1]}, model.small_image_stem={ours[2]}: set those to the encoder's"
        )
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ConfigError(f"model.init: {given}: {weights} is missing")
    load_init(backbone_for(cfg), str(weights), cfg)
    return weights.resolve()


def _stored_copy(cfg: ExperimentConfig, weights: Path) -> str:
    """``weights`` copied to ``<run.storage_path>/inits/<sha256>.pt`` (once: the name is its content)."""
    data = weights.read_bytes()
    target = storage.join(storage_path_of(cfg), INITS, f"{hashlib.sha256(data).hexdigest()[:32]}.pt")
    if not storage.exists(target):
        storage.write_bytes(target, data)
    return target


def _with_resolved(cfg: ExperimentConfig, resolved: str | None) -> ExperimentConfig:
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"init_resolved": resolved})})


__all__ = ["INITS", "resolve_init"]
