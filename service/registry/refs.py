"""Encoder references and where their packages come from.

References understood by :func:`resolve_ref` (and so by ``pull`` and ``load_encoder``):

* ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` (also ``models:/NAME/latest``):
  the version's logged model, files ``extra_files/encoder.json`` and ``extra_files/weights.pt``;
* ``runs:/RUN_ID`` (or ``runs:/RUN_ID/PATH``) or a bare 32-hex run id: the run's ``encoder/`` artifacts;
* a local folder holding ``encoder.json`` and ``weights.pt`` (or an MLflow model folder with them
  under ``extra_files/``).

A lookup that finds nothing names what does exist (models, aliases, versions, artifacts).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .. import tracking
from ..storage import write_atomic
from .champion import CHAMPION
from .models import LOGGED_MODEL_NAME, all_versions
from .package import ENCODER_JSON, EXTRA_FILES, WEIGHTS, EncoderError, package_dir, read_encoder_package

_RUN_ID = re.compile(r"[0-9a-f]{32}")


def is_local_ref(ref: str) -> bool:
    """Whether ``ref`` names an existing local path (a package folder) rather than an MLflow object."""
    ref = str(ref).strip()
    return "://" not in ref and not ref.startswith(("models:/", "runs:/")) and Path(ref).expanduser().exists()


def resolve_ref(ref: str, dst: str | Path | None = None, uri: str | None = None) -> Path:
    """The local folder holding ``encoder.json`` and ``weights.pt`` of ``ref``: the folder itself, or,
    when it lives in the MLflow store at ``uri`` (default: the project's), a download into ``dst`` (or a
    new temporary folder). See the module docstring for the forms of ``ref``."""
    ref = str(ref).strip()
    if is_local_ref(ref):
        return _local_package(ref)
    is_run = ref.startswith("runs:/") or _RUN_ID.fullmatch(ref) is not None
    if not ref.startswith("models:/") and not is_run:
        raise EncoderError(
            f"{ref!r} is not an encoder reference (nor an existing folder): use models:/NAME@ALIAS, "
            f"models:/NAME/VERSION, runs:/RUN_ID, a 32-hex run id, or a local folder holding {ENCODER_JSON} "
            f"and {WEIGHTS}"
        )
    target = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="moco-encoder-"))
    target.mkdir(parents=True, exist_ok=True)
    uri = tracking.resolve_tracking_uri(uri)
    if is_run:
        rest = ref[len("runs:/") :].strip("/") if ref.startswith("runs:/") else ref
        run_id, _, sub = rest.partition("/")
        return _run_package(uri, ref, run_id, sub or LOGGED_MODEL_NAME, target)
    return _version_package(uri, ref, target)


def pull(ref: str, out: str | Path, uri: str | None = None) -> Path:
    """Resolve ``ref`` and leave exactly its ``encoder.json`` and ``weights.pt`` in folder ``out``.

    The package is checked (rebuilt and loaded, safely) before anything is written to ``out``.
    """
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="moco-pull-") as tmp:
        src = resolve_ref(ref, tmp, uri)
        read_encoder_package(src)
        out.mkdir(parents=True, exist_ok=True)
        for f in (ENCODER_JSON, WEIGHTS):
            if (out / f).exists() and (src / f).exists() and os.path.samefile(src / f, out / f):
                continue
            write_atomic(out / f, lambda p, f=f: shutil.copyfile(src / f, p))
    return out


def _local_package(ref: str) -> Path:
    local = Path(ref).expanduser()
    if not local.is_dir():
        raise EncoderError(f"{ref}: expected a folder holding {ENCODER_JSON} and {WEIGHTS}, not a file")
    folder = package_dir(local)
    if not (folder / ENCODER_JSON).is_file() or not (folder / WEIGHTS).is_file():
        have = sorted(p.name for p in local.iterdir())[:20]
        raise EncoderError(
            f"{ref}: folder does not hold {ENCODER_JSON} and {WEIGHTS}; it holds {have or 'nothing'}"
        )
    return folder


def _version_package(uri: str, ref: str, dst: Path) -> Path:
    """The package of a registered version: its logged model's ``extra_files/``, else its run's
    ``encoder/`` (a version registered from elsewhere)."""
    client = tracking.client(uri)
    name, version = _parse_models_ref(client, uri, ref)
    got = _download(uri, f"models:/{name}/{version}/{EXTRA_FILES}", dst)
    if got is None:
        mv = client.get_model_version(name, str(version))
        if mv.run_id:
            got = _download_run_files(uri, mv.run_id, LOGGED_MODEL_NAME, dst)
    if got is None:
        raise EncoderError(
            f"{ref}: version {version} of {name!r} holds no encoder package ({EXTRA_FILES}/{ENCODER_JSON} "
            f"and {EXTRA_FILES}/{WEIGHTS} are missing, and so is its run's {LOGGED_MODEL_NAME}/ folder)"
        )
    return got


def _parse_models_ref(client: Any, uri: str, ref: str) -> tuple[str, int]:
    """``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` / ``models:/NAME/latest`` -> ``(NAME, version)``."""
    rest = ref[len("models:/") :].strip("/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        rm = _registered_model(client, uri, name, ref)
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
        rm = _registered_model(client, uri, rest, ref)
        raise EncoderError(
            f"{ref}: give a version or an alias, e.g. models:/{rest}@{CHAMPION} or models:/{rest}/VERSION; "
            f"aliases: {dict(rm.aliases or {}) or 'none'}; versions: {_versions_of(client, rest) or 'none'}"
        )
    name, ver = rest.rsplit("/", 1)
    _registered_model(client, uri, name, ref)
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


def _registered_model(client: Any, uri: str, name: str, ref: str) -> Any:
    try:
        return client.get_registered_model(name)
    except tracking.mlflow_errors():
        try:
            names = sorted(m.name for m in client.search_registered_models(max_results=20))
        except tracking.store_errors():
            names = []
        raise EncoderError(
            f"{ref}: no registered model named {name!r} in the registry at {uri}; "
            f"registered models: {', '.join(names) or 'none'}. Check the name, or MLFLOW_TRACKING_URI"
        ) from None


def _versions_of(client: Any, name: str) -> list[int]:
    try:
        return sorted(int(v.version) for v in all_versions(client, name))
    except tracking.store_errors():
        return []


def _run_package(uri: str, ref: str, run_id: str, sub: str, dst: Path) -> Path:
    """The package of a run: its ``sub/`` artifacts, else (for ``encoder/``) a LoggedModel attached to
    the run that holds the package in ``extra_files/``."""
    client = tracking.client(uri)
    try:
        run = client.get_run(run_id)
    except tracking.mlflow_errors():
        raise EncoderError(f"{ref}: no run {run_id} in the tracking store at {uri}") from None
    got = _download_run_files(uri, run_id, sub, dst)
    if got is None and sub == LOGGED_MODEL_NAME:
        for out in (run.outputs.model_outputs if run.outputs else None) or []:
            try:
                location = client.get_logged_model(out.model_id).artifact_location
            except tracking.store_errors():
                continue
            got = _download(uri, f"{location.rstrip('/')}/{EXTRA_FILES}", dst / out.model_id)
            if got is not None:
                break
    if got is None:
        try:
            have = sorted(a.path for a in client.list_artifacts(run_id))
        except tracking.store_errors():
            have = []
        raise EncoderError(
            f"{ref}: run {run_id} has no encoder package under {sub!r} (expected {sub}/{ENCODER_JSON} and "
            f"{sub}/{WEIGHTS}); its artifacts: {have or 'none'}. Did the run finish?"
        )
    return got


def _download(uri: str, artifact_uri: str, dst: Path) -> Path | None:
    """Download an artifact folder; ``None`` when it does not hold an encoder package."""
    from mlflow.artifacts import download_artifacts

    try:
        local = download_artifacts(
            artifact_uri=artifact_uri, dst_path=str(dst), tracking_uri=uri, registry_uri=uri
        )
    except tracking.store_errors():  # missing artifact
        return None
    folder = package_dir(Path(local))
    return folder if (folder / ENCODER_JSON).is_file() and (folder / WEIGHTS).is_file() else None


def _download_run_files(uri: str, run_id: str, sub: str, dst: Path) -> Path | None:
    """The two files of ``runs:/RUN_ID/SUB``, fetched one by one: since MLflow 3, ``runs:/RUN_ID/encoder``
    as a folder is the run's ``encoder/`` merged with the LoggedModel named ``encoder`` (model.pt2 and
    all)."""
    from mlflow.artifacts import download_artifacts

    got = []
    for f in (ENCODER_JSON, WEIGHTS):
        try:
            path = download_artifacts(
                run_id=run_id, artifact_path=f"{sub}/{f}", dst_path=str(dst), tracking_uri=uri
            )
        except tracking.store_errors():
            return None
        got.append(Path(path))
    folder = got[0].parent
    return folder if all(p.is_file() and p.parent == folder for p in got) else None


__all__ = ["is_local_ref", "resolve_ref", "pull"]
