"""The encoder package, the MLflow model registry and the champion rule.

An *encoder package* is a folder with two files:

* ``weights.pt``: the backbone's ``state_dict`` (tensors only), read back with
  ``torch.load(..., weights_only=True)``; a pulled encoder can never run code on the puller's machine;
* ``encoder.json``: everything needed to rebuild and feed the backbone (arch, stem, channels, feature
  width, image size, normalisation) plus where it came from (MoCo config, data fingerprint, run, metrics).

``register_encoder`` puts a package into MLflow twice over: as the run's ``encoder/`` artifacts and as
a LoggedModel (``pt2`` / ``torch.export``, no pickle) that becomes a new version of a registered model,
with the package in the model's ``extra_files/``. The alias ``champion`` follows
:func:`champion_should_move`, the one place of that rule.

References understood by :func:`resolve_ref` / :func:`pull` / :func:`load_encoder`:

* ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` (also ``models:/NAME/latest``):
  the version's logged model, files ``extra_files/encoder.json`` and ``extra_files/weights.pt``;
* ``runs:/RUN_ID`` (or ``runs:/RUN_ID/PATH``) or a bare 32-hex run id: the run's ``encoder/`` artifacts;
* a local folder holding ``encoder.json`` and ``weights.pt`` (or an MLflow model folder with them
  under ``extra_files/``).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from moco_core.augment import build_eval_transform, normalization
from moco_core.backbones import ARCHS, create_backbone
from moco_core.config import ExperimentConfig

ENCODER_JSON = "encoder.json"
WEIGHTS = "weights.pt"
FORMAT_VERSION = 1
CHAMPION = "champion"
LOGGED_MODEL_NAME = "encoder"  # LoggedModel name and run artifact folder
EXTRA_FILES = "extra_files"  # where mlflow puts ``extra_files`` inside a logged model

TAG_METRIC = "moco.metric"
TAG_VALUE = "moco.value"
TAG_FINGERPRINT = "moco.fingerprint"
TAG_SOURCE_RUN = "moco.source_run_id"

_RUN_ID = re.compile(r"[0-9a-f]{32}")


class EncoderError(ValueError):
    """A user-facing failure about an encoder: unknown reference, bad package; says what to do."""


# ---------------------------------------------------------------------------------------------
# the package


def _unwrap(module: nn.Module) -> nn.Module:
    """The plain module under ``torch.compile`` (``_orig_mod``) and DDP (``module``) wrappers."""
    while True:
        if hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        elif isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def _finite_or_none(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_encoder_package(
    out_dir: str | Path,
    backbone: nn.Module,
    cfg: ExperimentConfig,
    *,
    fingerprint: str,
    run_id: str | None,
    metrics: dict[str, float],
) -> Path:
    """Write ``weights.pt`` and ``encoder.json`` of ``backbone`` into ``out_dir``; returns ``out_dir``.

    The state dict is checked against a fresh ``create_backbone`` of ``cfg`` first, so a package that
    could not be read back is never written.
    """
    out = Path(out_dir)
    net = _unwrap(backbone)
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    arch, channels, stem = cfg.model.arch, cfg.data.channels, cfg.model.small_image_stem
    fresh = create_backbone(arch, channels, stem)
    try:
        fresh.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise EncoderError(
            f"the backbone does not match model.arch={arch}, data.channels={channels}, "
            f"model.small_image_stem={stem} of config {cfg.name!r}: {e}"
        ) from None
    mean, std = normalization(channels)
    meta = {
        "format_version": FORMAT_VERSION,
        "name": cfg.name,
        "arch": arch,
        "small_image_stem": stem,
        "in_channels": channels,
        "feature_dim": int(fresh.feature_dim),  # type: ignore[arg-type]
        "image_size": cfg.data.image_size,
        "mean": mean,
        "std": std,
        "augment_recipe": cfg.augment.recipe,
        "moco": cfg.moco.model_dump(mode="json"),
        "model": cfg.model.model_dump(mode="json"),
        "data_fingerprint": fingerprint,
        "source_run_id": run_id,
        "metrics": {str(k): _finite_or_none(v) for k, v in (metrics or {}).items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / WEIGHTS, lambda p: torch.save(state, p))
    text = json.dumps(meta, indent=2, allow_nan=False) + "\n"
    _write_atomic(out / ENCODER_JSON, lambda p: p.write_text(text))
    return out


def _package_dir(path: Path) -> Path:
    """``path`` itself, or its ``extra_files/`` when ``path`` is an MLflow model folder."""
    if not (path / ENCODER_JSON).exists() and (path / EXTRA_FILES / ENCODER_JSON).is_file():
        return path / EXTRA_FILES
    return path


def read_encoder_meta(path: str | Path) -> dict:
    """The validated ``encoder.json`` of the package in folder ``path``."""
    folder = _package_dir(Path(path))
    if not folder.is_dir():
        raise EncoderError(
            f"encoder package {folder} is not a folder; expected one holding {ENCODER_JSON} and {WEIGHTS}"
        )
    meta_file = folder / ENCODER_JSON
    if not meta_file.is_file():
        raise EncoderError(
            f"{meta_file} is missing: not an encoder package (expected {ENCODER_JSON} and {WEIGHTS})"
        )
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EncoderError(f"{meta_file} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise EncoderError(f"{meta_file}: expected a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise EncoderError(
            f"{meta_file}: format_version {version!r} is not supported (this code reads {FORMAT_VERSION}); "
            "pull the encoder with a matching version of this package"
        )
    required = ("arch", "in_channels", "small_image_stem", "image_size", "mean", "std")
    missing = [k for k in required if k not in meta]
    if missing:
        raise EncoderError(f"{meta_file}: missing keys {missing}")
    if meta["arch"] not in ARCHS:
        raise EncoderError(f"{meta_file}: unknown arch {meta['arch']!r}; this code knows {sorted(ARCHS)}")
    if meta["in_channels"] not in (1, 3):
        raise EncoderError(f"{meta_file}: in_channels must be 1 or 3, not {meta['in_channels']!r}")
    ch = meta["in_channels"]
    mean, std = meta["mean"], meta["std"]
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == ch):
        raise EncoderError(f"{meta_file}: mean and std must be lists of {ch} numbers")
    return meta


def read_encoder_package(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the backbone of the package in folder ``path``; returns ``(backbone in eval mode, meta)``.

    Weights are read with ``torch.load(weights_only=True)``: a ``weights.pt`` that holds anything but
    tensors in plain containers is refused, never unpickled.
    """
    folder = _package_dir(Path(path))
    meta = read_encoder_meta(folder)
    weights = folder / WEIGHTS
    meta_file = folder / ENCODER_JSON
    if not weights.is_file():
        raise EncoderError(f"{weights} is missing: the package in {folder} has {ENCODER_JSON} but no weights")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for objects, RuntimeError for a corrupt zip, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EncoderError(
            f"{weights} is not a plain tensor state_dict and was refused (loaded with weights_only=True, "
            f"objects are never unpickled): {first}"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise EncoderError(
            f"{weights}: expected a state_dict (a mapping of names to tensors), got {type(state).__name__}"
        )
    backbone = create_backbone(meta["arch"], int(meta["in_channels"]), bool(meta["small_image_stem"]))
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        if len(detail) > 600:
            detail = detail[:600] + " ..."
        raise EncoderError(
            f"{weights} does not fit the backbone described by {meta_file} (arch={meta['arch']}, "
            f"in_channels={meta['in_channels']}, small_image_stem={meta['small_image_stem']}): {detail}"
        ) from None
    fd = meta.get("feature_dim")
    if fd is not None and int(fd) != int(backbone.feature_dim):  # type: ignore[arg-type]
        raise EncoderError(
            f"{meta_file}: feature_dim={fd} but arch {meta['arch']} gives {backbone.feature_dim}"
        )
    backbone.eval()
    return backbone, meta


# ---------------------------------------------------------------------------------------------
# the champion rule


def champion_should_move(current: dict | None, candidate: dict) -> bool:
    """Whether alias ``champion`` moves from ``current`` to ``candidate``.

    Both are ``{"metric": str, "value": float, "fingerprint": str}``. It moves when there is no champion,
    or when both were scored with the same metric on the same data (fingerprint) and the candidate
    scores strictly higher (every metric used is higher-is-better: top-1, AUROC). Scores on another
    metric or other data are not comparable, so they never displace a champion; neither does a tie.
    A champion without a usable score (NaN) is displaced by any finite score on the same metric and data.
    """
    if current is None:
        return True
    same_metric = current.get("metric") == candidate.get("metric")
    if not same_metric or current.get("fingerprint") != candidate.get("fingerprint"):
        return False
    if current.get("metric") is None or current.get("fingerprint") is None:
        return False
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


# ---------------------------------------------------------------------------------------------
# MLflow


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def _mlflow_errors() -> tuple[type[BaseException], ...]:
    from mlflow.exceptions import MlflowException

    return (MlflowException,)


def _store_errors() -> tuple[type[BaseException], ...]:
    """What a lookup or download that finds nothing raises: MlflowException or OSError, by store."""
    return (*_mlflow_errors(), OSError)


def _version_score(mv) -> dict:
    tags = mv.tags or {}
    value = tags.get(TAG_VALUE)
    try:
        value_f = float(value) if value is not None else None
    except ValueError:
        value_f = None
    return {"metric": tags.get(TAG_METRIC), "value": value_f, "fingerprint": tags.get(TAG_FINGERPRINT)}


def _requirements() -> list[str]:
    import mlflow

    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"]


def register_encoder(
    package_dir: str | Path,
    *,
    run_id: str,
    model_name: str,
    metric: str,
    value: float,
    fingerprint: str,
    input_example_size: tuple[int, int, int] | None = None,
) -> dict:
    """Log the package to run ``run_id`` and register it as a new version of ``model_name``.

    The run gets the files as artifacts ``encoder/``; a LoggedModel ``encoder`` (``pt2``, loads with
    ``mlflow.pytorch.load_model`` without pickle) attached to the run becomes the new version, tagged
    with its score; alias ``champion`` moves to it iff :func:`champion_should_move` says so.
    Returns ``{"name", "version", "champion", "previous_champion", "model_uri"}``.
    """
    import mlflow
    import numpy as np

    mlflow_error = _mlflow_errors()
    folder = _package_dir(Path(package_dir))
    backbone, meta = read_encoder_package(folder)
    client = _client()
    try:
        run = client.get_run(run_id)
    except mlflow_error as e:
        raise EncoderError(f"cannot register the encoder: run {run_id!r} not found ({e.message})") from None

    # 1. the package as run artifacts encoder/weights.pt, encoder/encoder.json
    for f in (ENCODER_JSON, WEIGHTS):
        client.log_artifact(run_id, str(folder / f), LOGGED_MODEL_NAME)

    # 2. a pt2 LoggedModel attached to the run, registered as a new version. The LoggedModel is created
    # here, in the run's experiment, so that no fluent (global, thread-local) run state is touched.
    size = int(meta["image_size"])
    c, s1, s2 = input_example_size or (int(meta["in_channels"]), size, size)
    # traced, never evaluated for its values (zeros keep its JSON small); batch 2 keeps the batch dim dynamic
    example = np.zeros((2, c, s1, s2), dtype=np.float32)
    score_tags = {
        TAG_METRIC: metric,
        TAG_VALUE: repr(float(value)),
        TAG_FINGERPRINT: fingerprint,
        TAG_SOURCE_RUN: run_id,
    }
    logged = client.create_logged_model(
        experiment_id=run.info.experiment_id,
        name=LOGGED_MODEL_NAME,
        source_run_id=run_id,
        params={k: str(meta[k]) for k in ("arch", "in_channels", "small_image_stem", "image_size")},
        model_type="moco-encoder",
    )
    try:
        info = mlflow.pytorch.log_model(
            backbone,
            name=LOGGED_MODEL_NAME,
            model_id=logged.model_id,
            run_id=run_id,
            serialization_format="pt2",
            input_example=example,
            extra_files=[str(folder / WEIGHTS), str(folder / ENCODER_JSON)],
            pip_requirements=_requirements(),
            registered_model_name=model_name,
            tags=score_tags,  # on the LoggedModel and, set at creation, on the new model version
            # MLflow would reload the model through pyfunc only to *warn* on failure (~2 s); the
            # tests load every registered version with mlflow.pytorch.load_model instead.
            validate_serving_input=False,
        )
    except Exception as e:
        raise EncoderError(
            f"logging the encoder of run {run_id} as an MLflow 'pt2' (torch.export) model failed, so it was "
            f"not registered as {model_name!r} (no pickle fallback): {type(e).__name__}: {e}"
        ) from e
    if info.registered_model_version is None:
        raise EncoderError(
            f"MLflow logged the encoder of run {run_id} but created no version of {model_name!r}"
        )
    version = int(info.registered_model_version)

    # 3. score tags and the champion alias
    candidate = {"metric": metric, "value": float(value), "fingerprint": fingerprint}
    mv = client.get_model_version(model_name, str(version))
    for key, val in score_tags.items():
        if (mv.tags or {}).get(key) != val:
            client.set_model_version_tag(model_name, str(version), key, val)
    previous: int | None = None
    current: dict | None = None
    rm = client.get_registered_model(model_name)
    if CHAMPION in (rm.aliases or {}):
        previous = int(rm.aliases[CHAMPION])
        try:
            current = _version_score(client.get_model_version(model_name, str(previous)))
        except mlflow_error:  # the alias points at a deleted version: no champion to beat
            current = None
    moved = champion_should_move(current, candidate)
    if moved:
        client.set_registered_model_alias(model_name, CHAMPION, str(version))
    return {
        "name": model_name,
        "version": version,
        "champion": moved,
        "previous_champion": previous,
        "model_uri": f"models:/{model_name}/{version}",
    }


def _list_names(client, limit: int = 20) -> list[str]:
    try:
        return sorted(m.name for m in client.search_registered_models(max_results=limit))
    except _store_errors():
        return []


def _versions_of(client, name: str) -> list[int]:
    try:
        escaped = name.replace("'", "\\'")
        return sorted(int(v.version) for v in _all_versions(client, f"name = '{escaped}'"))
    except _store_errors():
        return []


def _all_versions(client, filter_string: str) -> list:
    out, token = [], None
    while True:
        page = client.search_model_versions(filter_string, max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _registered_model(client, name: str, ref: str):
    try:
        return client.get_registered_model(name)
    except _mlflow_errors():
        names = _list_names(client)
        have = ", ".join(names) if names else "none"
        raise EncoderError(
            f"{ref}: no registered model named {name!r} in the registry at {_tracking_uri()}; "
            f"registered models: {have}. Check the name, or MLFLOW_TRACKING_URI"
        ) from None


def _tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def _parse_models_ref(client, ref: str) -> tuple[str, int]:
    """``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` / ``models:/NAME/latest`` -> ``(NAME, version)``."""
    rest = ref[len("models:/"):].strip("/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        rm = _registered_model(client, name, ref)
        aliases = {a: int(v) for a, v in (rm.aliases or {}).items()}
        if alias not in aliases:
            have = ", ".join(f"@{a} -> {v}" for a, v in sorted(aliases.items())) or "none"
            raise EncoderError(
                f"{ref}: model {name!r} has no alias {alias!r}; aliases: {have}; "
                f"versions: {_versions_of(client, name) or 'none'}. "
                f"Use models:/{name}/VERSION or an existing alias"
            )
        return name, aliases[alias]
    if "/" not in rest:
        rm = _registered_model(client, rest, ref)
        raise EncoderError(
            f"{ref}: give a version or an alias, e.g. models:/{rest}@{CHAMPION} or models:/{rest}/VERSION; "
            f"aliases: {dict(rm.aliases or {}) or 'none'}; versions: {_versions_of(client, rest) or 'none'}"
        )
    name, ver = rest.rsplit("/", 1)
    _registered_model(client, name, ref)
    versions = _versions_of(client, name)
    if ver == "latest":
        if not versions:
            raise EncoderError(f"{ref}: model {name!r} has no versions yet")
        return name, versions[-1]
    if not ver.isdigit() or int(ver) not in versions:
        raise EncoderError(
            f"{ref}: model {name!r} has no version {ver!r}; versions: {versions or 'none'}. "
            f"Use one of them, or models:/{name}@{CHAMPION}"
        )
    return name, int(ver)


def _download(uri: str, *, dst: Path) -> Path | None:
    """Download an artifact folder; ``None`` when it does not hold an encoder package."""
    from mlflow.artifacts import download_artifacts

    try:
        local = download_artifacts(artifact_uri=uri, dst_path=str(dst))
    except _store_errors():  # missing artifact
        return None
    folder = _package_dir(Path(local))
    return folder if (folder / ENCODER_JSON).is_file() and (folder / WEIGHTS).is_file() else None


def _download_run_package(run_id: str, sub: str, dst: Path) -> Path | None:
    """The two files of ``runs:/RUN_ID/SUB``, fetched one by one: since MLflow 3, ``runs:/RUN_ID/encoder``
    as a folder is the run's ``encoder/`` merged with the LoggedModel named ``encoder`` (model.pt2 and
    all)."""
    from mlflow.artifacts import download_artifacts

    got = []
    for f in (ENCODER_JSON, WEIGHTS):
        try:
            got.append(Path(download_artifacts(run_id=run_id, artifact_path=f"{sub}/{f}", dst_path=str(dst))))
        except _store_errors():
            return None
    folder = got[0].parent
    return folder if all(p.is_file() and p.parent == folder for p in got) else None


def _resolve_run(client, ref: str, run_id: str, sub: str | None, dst: Path) -> Path:
    try:
        run = client.get_run(run_id)
    except _mlflow_errors():
        raise EncoderError(f"{ref}: no run {run_id} in the tracking store at {_tracking_uri()}") from None
    sub = sub or LOGGED_MODEL_NAME
    got = _download_run_package(run_id, sub, dst)
    if got is None and sub == LOGGED_MODEL_NAME:
        # no encoder/ artifacts: a LoggedModel attached to the run may hold the package in extra_files/
        for out in (run.outputs.model_outputs if run.outputs else None) or []:
            try:
                location = client.get_logged_model(out.model_id).artifact_location
            except _store_errors():
                continue
            got = _download(f"{location.rstrip('/')}/{EXTRA_FILES}", dst=dst / out.model_id)
            if got is not None:
                break
    if got is None:
        try:
            have = sorted(a.path for a in client.list_artifacts(run_id))
        except _store_errors():
            have = []
        raise EncoderError(
            f"{ref}: run {run_id} has no encoder package under {sub!r} (expected {sub}/{ENCODER_JSON} and "
            f"{sub}/{WEIGHTS}); its artifacts: {have or 'none'}. Did the run finish?"
        )
    return got


def is_local_ref(ref: str) -> bool:
    """Whether ``ref`` names an existing local path (a package folder) rather than an MLflow object."""
    ref = str(ref).strip()
    return "://" not in ref and not ref.startswith(("models:/", "runs:/")) and Path(ref).expanduser().exists()


def connect(check: bool = True) -> str:
    """Point MLflow at the tracking store of this project (``MLFLOW_TRACKING_URI``, else
    ``sqlite:///mlflow.db`` in the working directory), checked reachable; returns its URI."""
    import mlflow

    from .tracking import check_reachable, resolve_tracking_uri

    uri = resolve_tracking_uri(None)
    if check:
        check_reachable(uri)  # TrackingError naming the URI
    mlflow.set_tracking_uri(uri)
    return uri


def resolve_ref(ref: str, dst: str | Path | None = None) -> Path:
    """The local folder holding ``encoder.json`` and ``weights.pt`` of ``ref`` (downloaded into ``dst``
    or a new temporary folder when it lives in MLflow). See the module docstring for the forms of ``ref``."""
    ref = str(ref).strip()
    local = Path(ref).expanduser()
    if is_local_ref(ref):
        if not local.is_dir():
            raise EncoderError(f"{ref}: expected a folder holding {ENCODER_JSON} and {WEIGHTS}, not a file")
        folder = _package_dir(local)
        if not (folder / ENCODER_JSON).is_file() or not (folder / WEIGHTS).is_file():
            have = sorted(p.name for p in local.iterdir())[:20]
            raise EncoderError(
                f"{ref}: folder does not hold {ENCODER_JSON} and {WEIGHTS}; it holds {have or 'nothing'}"
            )
        return folder

    is_run = ref.startswith("runs:/") or _RUN_ID.fullmatch(ref) is not None
    if not ref.startswith("models:/") and not is_run:
        raise EncoderError(
            f"{ref!r} is not an encoder reference (nor an existing folder): use models:/NAME@ALIAS, "
            f"models:/NAME/VERSION, runs:/RUN_ID, a 32-hex run id, or a local folder holding {ENCODER_JSON} "
            f"and {WEIGHTS}"
        )
    target = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="moco-encoder-"))
    target.mkdir(parents=True, exist_ok=True)
    client = _client()
    if is_run:
        rest = ref[len("runs:/"):].strip("/") if ref.startswith("runs:/") else ref
        run_id, _, sub = rest.partition("/")
        return _resolve_run(client, ref, run_id, sub or None, target)

    name, version = _parse_models_ref(client, ref)
    got = _download(f"models:/{name}/{version}/{EXTRA_FILES}", dst=target)
    if got is None:
        # a version registered from elsewhere: fall back to its run's encoder/ artifacts
        mv = client.get_model_version(name, str(version))
        if mv.run_id:
            got = _download_run_package(mv.run_id, LOGGED_MODEL_NAME, target)
    if got is None:
        raise EncoderError(
            f"{ref}: version {version} of {name!r} holds no encoder package ({EXTRA_FILES}/{ENCODER_JSON} "
            f"and {EXTRA_FILES}/{WEIGHTS} are missing, and so is its run's {LOGGED_MODEL_NAME}/ folder)"
        )
    return got


def pull(ref: str, out: str | Path) -> Path:
    """Resolve ``ref`` and leave exactly its ``encoder.json`` and ``weights.pt`` in folder ``out``.

    The package is checked (rebuilt and loaded, safely) before anything is written to ``out``.
    """
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="moco-pull-") as tmp:
        src = resolve_ref(ref, tmp)
        read_encoder_package(src)
        out.mkdir(parents=True, exist_ok=True)
        for f in (ENCODER_JSON, WEIGHTS):
            if (out / f).exists() and (src / f).exists() and os.path.samefile(src / f, out / f):
                continue
            _write_atomic(out / f, lambda p, f=f: shutil.copyfile(src / f, p))
    return out


class Preprocess:
    """Image tensor(s) -> what the encoder expects: ``(C, H, W)`` or ``(N, C, H, W)``, uint8 (0-255) or
    float (0-1) -> float32 resized (short side) and center-cropped to ``image_size``, normalised with the
    package's mean/std. RGB input to a gray encoder is converted to gray, gray input to an RGB encoder
    is repeated. PIL images are accepted too."""

    def __init__(self, image_size: int, channels: int, mean: list[float], std: list[float]) -> None:
        from torchvision.transforms import v2

        self.image_size, self.channels = int(image_size), int(channels)
        self.transform = build_eval_transform(self.image_size, self.channels)
        for op in getattr(self.transform, "transforms", []):
            if isinstance(op, v2.Normalize):  # the package's statistics, whatever today's constants are
                op.mean, op.std = [float(m) for m in mean], [float(s) for s in std]

    def __call__(self, img: Any) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        if not isinstance(img, torch.Tensor):
            img = TF.pil_to_tensor(img)
        if img.ndim not in (3, 4):
            raise ValueError(
                f"expected an image (C, H, W) or a batch (N, C, H, W), got shape {tuple(img.shape)}"
            )
        c = img.shape[-3]
        if c != self.channels:
            if c == 3 and self.channels == 1:
                img = TF.rgb_to_grayscale(img, num_output_channels=1)
            elif c == 1 and self.channels == 3:
                img = img.expand(*img.shape[:-3], 3, *img.shape[-2:])
            else:
                raise ValueError(f"the encoder takes {self.channels}-channel images, got {c} channels")
        return self.transform(img)

    def __repr__(self) -> str:
        return f"Preprocess(image_size={self.image_size}, channels={self.channels}, {self.transform!r})"


def load_encoder(ref: str) -> nn.Module:
    """The backbone of ``ref`` in eval mode, with ``.encoder_meta`` (its ``encoder.json``) and
    ``.preprocess`` (see :class:`Preprocess`)::

        enc = load_encoder("models:/moco-digits@champion"); x = enc.preprocess(img); f = enc(x[None])
    """
    with tempfile.TemporaryDirectory(prefix="moco-encoder-") as tmp:
        backbone, meta = read_encoder_package(resolve_ref(ref, tmp))
    backbone.encoder_meta = meta  # type: ignore[assignment]
    pre = Preprocess(meta["image_size"], meta["in_channels"], meta["mean"], meta["std"])
    backbone.preprocess = pre  # type: ignore[assignment]
    return backbone


def list_encoders() -> list[dict]:
    """Registered models holding encoders (name ``moco-*``, or a version tagged by :func:`register_encoder`):
    ``[{"name", "aliases": {alias: version}, "versions": [{"version", "run_id", "metric", "value",
    "fingerprint", "creation_time" (ms since epoch), "aliases"}]}]``, sorted by name and version."""
    client = _client()
    models, token = [], None
    while True:
        page = client.search_registered_models(max_results=1000, page_token=token)
        models.extend(page)
        token = page.token
        if not token:
            break
    out = []
    for rm in sorted(models, key=lambda m: m.name):
        versions = _all_versions(client, "name = '{}'".format(rm.name.replace("'", "\\'")))
        if not rm.name.startswith("moco-") and not any(TAG_METRIC in (v.tags or {}) for v in versions):
            continue
        aliases = {a: int(v) for a, v in (rm.aliases or {}).items()}
        rows = []
        for mv in sorted(versions, key=lambda v: int(v.version)):
            score = _version_score(mv)
            rows.append({
                "version": int(mv.version),
                "run_id": (mv.tags or {}).get(TAG_SOURCE_RUN) or mv.run_id,
                "metric": score["metric"],
                "value": score["value"],
                "fingerprint": score["fingerprint"],
                "creation_time": mv.creation_timestamp,
                "aliases": sorted(a for a, v in aliases.items() if v == int(mv.version)),
            })
        out.append({"name": rm.name, "aliases": aliases, "versions": rows})
    return out


__all__ = [
    "EncoderError",
    "ENCODER_JSON",
    "WEIGHTS",
    "write_encoder_package",
    "read_encoder_package",
    "read_encoder_meta",
    "champion_should_move",
    "register_encoder",
    "resolve_ref",
    "is_local_ref",
    "connect",
    "pull",
    "load_encoder",
    "list_encoders",
    "Preprocess",
]
