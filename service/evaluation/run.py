"""``moco evaluate``: what an encoder is worth downstream, with few labels, against a random init.

ENCODER (any reference :func:`service.registry.resolve_ref` understands) -> its package, loaded safely
-> the labelled dataset, checked against the encoder and the protocols -> :mod:`moco_core.eval` runs
every protocol at every label fraction (and again on a random-init encoder of the same architecture
with ``baseline="random"``) -> the report (:mod:`.report`): a table, a JSON file, and an MLflow run in the
source run's experiment (:mod:`.mlflow_run`), tagged with the source run's id, holding the metrics, the
JSON and the plots (:mod:`.plots`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moco_core.backbones import create_backbone
from moco_core.config import DataConfig
from moco_core.data import Partition, dataset_fingerprint, read_dataset
from moco_core.errors import UserError
from moco_core.eval import (
    ProtocolSettings,
    Task,
    check_channels,
    check_labels,
    encode,
    label_subset,
    run_protocols,
)
from moco_core.store import check_source, default_store_size, read_index, store_partitions

from .. import registry, tracking
from ..prepare import dataset_source, prepare_store
from ..progress import say
from ..storage import absolute
from .choices import DEFAULT_PROTOCOLS
from .mlflow_run import log_run
from .report import build_report, check_out, write_json


def evaluate(
    ref: str,
    root: str | Path | None,
    *,
    splits_dir: str | Path | None = None,
    label_columns: list[str] | None = None,
    store: str | Path | None = None,
    protocols: Sequence[str] = DEFAULT_PROTOCOLS,
    fractions: Sequence[float] = (1.0,),
    baseline: str | None = None,
    seed: int = 0,
    settings: ProtocolSettings | None = None,
    track: bool = True,
    out: Path | None = None,
    prepare: bool = False,
) -> dict[str, Any]:
    """Run the evaluation; returns the report (also written to ``out`` and, if ``track``, to MLflow).
    With ``prepare``, ``store`` is prepared from the dataset first (or finished, or brought up to date)
    at the encoder's size and channels, on the Ray cluster of ``RAY_ADDRESS`` or a local one."""
    settings = settings or ProtocolSettings()
    if out is not None:
        check_out(out)
    if prepare and (root is None or store is None):
        raise UserError("moco evaluate --prepare makes --store from --data: give both")
    if root is None:  # the store's own partitions (a store on object storage, no dataset here)
        if store is None:
            raise UserError("moco evaluate needs the dataset (--data ROOT) or a prepared store (--store)")
        parts, root, store_channels = (
            store_partitions(store, label_columns),
            store,
            read_index(store)["channels"],
        )
    else:
        parts, store_channels = read_dataset(root, splits_dir, label_columns), None
    uri = tracking.resolve_tracking_uri(None)
    if track or not registry.is_local_ref(ref):
        tracking.check_reachable(uri)  # models:/ and run references resolve against it
    with tempfile.TemporaryDirectory(prefix="moco-evaluate-") as tmp:
        backbone, meta = registry.read_encoder_package(registry.resolve_ref(ref, tmp, uri))
    check_task(parts, meta, protocols, fractions, seed, store_channels)  # every fault before any work
    if store is not None and root != store:  # any size will do: views are made at the encoder's size
        if prepare:  # made from these very partitions (their files checked): nothing to check after
            size, channels = default_store_size(int(meta["image_size"])), int(meta["in_channels"])
            source = dataset_source(root, splits_dir, label_columns)
            prepare_store(parts, store, size, channels, source, say)
        else:
            check_source(store, read_index(store), parts)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    stats = ([float(m) for m in meta["mean"]], [float(s) for s in meta["std"]])  # the package's own
    task = Task(parts, data_config(root, splits_dir, label_columns, meta, store), stats, device)
    results, feats = {}, {}
    for who, net in encoders(backbone, meta, baseline, seed).items():
        net.to(device)
        say(f"[{who}] features of {sum(len(p) for p in parts.values())} images ({device})")
        feats[who] = encode(net, task, device, settings.batch_size)
        results[who] = run_protocols(
            net,
            task,
            protocols,
            fractions,
            settings,
            seed,
            device,
            log=lambda m, who=who: say(f"[{who}] {m}"),
            feats=feats[who],
        )
    report = build_report(
        ref,
        meta,
        task,
        root,
        splits_dir,
        protocols,
        fractions,
        baseline,
        seed,
        settings,
        results,
        fingerprint=dataset_fingerprint(parts["train"]),
    )
    if track:
        report["mlflow"] = log_run(uri, ref, meta, task, report, results, feats, seed)
    if out is not None:
        write_json(out, report)
    return report


def check_task(
    parts: dict[str, Partition],
    meta: dict,
    protocols: Sequence[str],
    fractions: Sequence[float],
    seed: int,
    store_channels: int | None = None,
) -> None:
    """The labels fit every protocol, the images fit the encoder (``store_channels``: those of the
    store the images come from, when there are no files to look at), every fraction keeps every class."""
    check_labels(parts, list(protocols))
    if store_channels is None:
        check_channels(parts["train"], int(meta["in_channels"]))
    elif store_channels == 3 and int(meta["in_channels"]) == 1:
        raise UserError(
            "the encoder takes 1-channel (gray) images and the store holds 3-channel (colour) ones: "
            "evaluate it on a store prepared with --channels 1"
        )
    for f in fractions:
        label_subset(parts["train"], f, seed)


def data_config(
    root: str | Path,
    splits_dir: str | Path | None,
    label_columns: list[str] | None,
    meta: dict,
    store: str | Path | None = None,
) -> DataConfig:
    """How the encoder sees the dataset: its image size and channels, read from ``store`` if given."""
    return DataConfig(
        root=absolute(root),
        splits_dir=str(Path(splits_dir).expanduser().resolve()) if splits_dir else None,
        image_size=int(meta["image_size"]),
        channels=int(meta["in_channels"]),
        label_columns=label_columns,
        num_workers=min(4, os.cpu_count() or 1),
        store=absolute(store) if store else None,
    )


def encoders(backbone: nn.Module, meta: dict, baseline: str | None, seed: int) -> dict[str, nn.Module]:
    """The encoder, and with ``baseline="random"`` a seeded random-init encoder of the same architecture."""
    out = {"encoder": backbone}
    if baseline == "random":
        torch.manual_seed(seed)
        out["random init"] = create_backbone(
            meta["arch"], int(meta["in_channels"]), bool(meta["small_image_stem"]), int(meta["image_size"])
        )
    return out


__all__ = ["evaluate"]
