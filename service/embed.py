"""``moco embed``: an encoder's features of every image of a dataset, computed with Ray Data, in one
Parquet file that pandas, pyarrow and Ray Data read back.

REF (any reference :func:`service.registry.resolve_ref` understands) -> its package, loaded on the
driver -> the partitions, files checked -> both before Ray starts -> a Ray Data dataset of rows
(``Path``, ``partition``, ``row`` = the CSV line, the labels) -> ``map_batches`` with :class:`Embedder`
on an actor pool (one GPU per actor when the cluster has GPUs, else CPUs) -> the batches, in order,
streamed into FILE.parquet under a temporary name, renamed at the end -> with ``neighbours=K``, each
image's K nearest neighbours by cosine among the others of the file.

Inside an actor the images come through the project's one data path: :func:`moco_core.store.images_of`
(a prepared store, or the files decoded) and :class:`moco_core.augment.EvalView` with the package's
own mean/std, so the features are those of ``load_encoder(REF)`` and its ``.preprocess``.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.nn import functional as F

from moco_core.augment import EvalView, eval_box
from moco_core.config import DataConfig
from moco_core.data import PARTITIONS, DataError, Fault, Partition, read_dataset
from moco_core.errors import UserError
from moco_core.eval import nearest_neighbours
from moco_core.files import write_atomic
from moco_core.store import check_source, images_of, read_index, store_partitions

from . import registry, tracking
from .evaluation.run import data_config
from .prepare import read_all
from .progress import say
from .ray_cluster import ensure_ray

FEATURE, NEIGHBOURS, COSINE = "feature", "neighbours", "neighbour_cosine"
COLUMNS = ("Path", "partition", "row")  # then the label columns, then FEATURE (and the neighbours)
_INDEX, _FAULT = "_index", "_fault"  # an image's position in its partition; why it could not be read
PROGRESS_EVERY_S = 10.0
CPUS_PER_ACTOR = 4  # torch threads of one CPU actor; a cluster of C CPUs runs C // 4 of them
ROW_GROUP = 16384  # rows per Parquet row group (readers skip through the file by row group)
NEIGHBOUR_CHUNK = 1024  # queries compared with the whole set at once: N x 1024 similarities in memory


class EmbedError(UserError, ValueError):
    """``moco embed`` cannot run as asked; the message says why and what to do."""


@dataclass
class EmbedResult:
    out: Path
    rows: int
    feature_dim: int
    seconds: float
    skipped: list[Fault] = field(default_factory=list)


def embed(
    ref: str,
    root: str | Path | None,
    out: str | Path,
    *,
    splits_dir: str | Path | None = None,
    label_columns: list[str] | None = None,
    store: str | Path | None = None,
    partition: str = "all",
    batch_size: int = 256,
    skip_bad: bool = False,
    neighbours: int = 0,
    address: str | None = None,
) -> EmbedResult:
    """Write the features of every image of ``partition`` (or of every partition) to ``out``."""
    out = Path(out).expanduser().absolute()
    if batch_size < 1:
        raise EmbedError(f"--batch-size must be at least 1, not {batch_size}")
    if neighbours < 0:
        raise EmbedError(f"--neighbours must be 0 (none) or more, not {neighbours}")
    uri = tracking.resolve_tracking_uri(None)
    if not registry.is_local_ref(ref):
        tracking.check_reachable(uri)  # models:/ and run references resolve against it
    with tempfile.TemporaryDirectory(prefix="moco-embed-") as tmp:
        backbone, meta = registry.read_encoder_package(registry.resolve_ref(ref, tmp, uri))
    parts = read_partitions(root, splits_dir, label_columns, partition, store)
    total = sum(len(p) for p in parts.values())
    if neighbours >= total:
        raise EmbedError(f"--neighbours {neighbours}: the set has {total} images; ask for fewer than that")
    if root is None:
        root = store  # the partitions are the store's own
    elif store is not None:  # any size will do: views are made at the encoder's size
        check_source(store, read_index(store), parts)
    rows, dim = rows_of(parts), int(backbone.feature_dim)
    say(f"embedding {total} images of {', '.join(parts)} with {ref} ({dim} features)")
    t0 = time.monotonic()
    data = data_config(root, splits_dir, label_columns, meta, store)
    ds = feature_dataset(rows, backbone, meta, data, parts, batch_size, address)
    skipped: list[Fault] = []

    def write(tmp: Path) -> None:
        skipped.extend(stream_features(ds, tmp, output_schema(rows.schema, dim), total, skip_bad, out))
        if neighbours:
            add_neighbours(tmp, neighbour_count(neighbours, total - len(skipped)))

    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, write)  # a temporary file beside ``out``, renamed: never half a file
    return EmbedResult(out, total - len(skipped), dim, time.monotonic() - t0, skipped)


def read_partitions(
    root: str | Path | None,
    splits_dir: str | Path | None,
    label_columns: list[str] | None,
    partition: str,
    store: str | Path | None = None,
) -> dict[str, Partition]:
    """The partitions to embed, every file checked to exist: ``all`` is every partition with a CSV;
    with no ``root``, the store's own partitions (its copies of the CSVs)."""
    if partition != "all" and partition not in PARTITIONS:
        raise EmbedError(f"unknown partition {partition!r}; use one of {', '.join(PARTITIONS)} or all")
    if root is None:
        if store is None:
            raise EmbedError("moco embed needs the dataset (--data ROOT) or a prepared store (--store)")
        parts = store_partitions(store, label_columns, None if partition == "all" else [partition])
    elif partition == "all":
        parts = read_all(root, splits_dir, label_columns)
    else:
        parts = read_dataset(root, splits_dir, label_columns, (partition,), check_files=True)
    clash = [
        c for c in next(iter(parts.values())).label_names if c in (*COLUMNS, FEATURE, NEIGHBOURS, COSINE)
    ]
    if clash:
        raise EmbedError(
            f"label column(s) {clash} would collide with the file's own columns; pick the label columns "
            f"with --label-columns"
        )
    return parts


def rows_of(parts: dict[str, Partition]) -> pa.Table:
    """One row per image, partition then CSV order: ``Path``, ``partition``, ``row``, the labels, and the
    image's position in its partition (``_index``, what an actor reads it by)."""
    tables = []
    for name, p in parts.items():
        n = len(p)
        columns: dict[str, Any] = {
            "Path": [q.relative_to(p.folder).as_posix() for q in p.paths],
            "partition": [name] * n,
            "row": np.asarray(p.rows, dtype=np.int64),
            **label_values(p),
            _INDEX: np.arange(n, dtype=np.int64),
        }
        tables.append(pa.table(columns))
    return pa.concat_tables(tables)


def label_values(p: Partition) -> dict[str, Any]:
    """Each label column's values as the dataset means them: the class (an integer when every class is
    one) of a single multi-class column, else 0/1 per column (binary, multi-label, one-hot)."""
    if p.targets is None:
        return {}
    if p.label_kind == "multiclass" and len(p.label_names) == 1:
        classes = [int(c) for c in p.classes] if all(_is_int(c) for c in p.classes) else list(p.classes)
        return {p.label_names[0]: [classes[int(t)] for t in p.targets]}
    hot = p.targets
    if p.label_kind == "multiclass":  # one-hot columns: class index -> 0/1 per column
        hot = np.eye(len(p.label_names), dtype=np.int64)[p.targets]
    return {name: hot[:, j].astype(np.int64) for j, name in enumerate(p.label_names)}


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def output_schema(rows: pa.Schema, dim: int) -> pa.Schema:
    """The file's columns: the rows' own (not ``_index``) and ``feature``, ``dim`` float32 each."""
    kept = [f for f in rows if f.name != _INDEX]
    return pa.schema([*kept, pa.field(FEATURE, pa.list_(pa.float32(), dim))])


def feature_dataset(
    rows: pa.Table,
    backbone: nn.Module,
    meta: dict,
    data: DataConfig,
    parts: dict[str, Partition],
    batch_size: int,
    address: str | None,
) -> Any:
    """The rows with ``feature`` (and ``_fault``) added by a pool of :class:`Embedder` actors."""
    ensure_ray(address)  # [1] the local cluster, or the one named (before Ray is imported here)
    import ray
    import ray.data

    quiet_ray_data_logs()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    blocks = max(1, math.ceil(len(rows) / batch_size))
    if gpus:
        actors, resources = gpus, {"num_gpus": 1}
    else:
        node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)
        per_actor = int(max(1, min(CPUS_PER_ACTOR, node_cpus)))
        actors = max(1, int(ray.cluster_resources().get("CPU", 1)) // per_actor)
        resources = {"num_cpus": per_actor}
    actors = min(actors, blocks)
    ds = ray.data.from_arrow(rows, override_num_blocks=blocks)  # [2] a block is one batch
    ds.context.execution_options.preserve_order = True  # the file's order: partition, then CSV order
    ds.context.enable_progress_bars = False  # progress is our own line every 10 s (say)
    ds.context.print_on_execution_start = False
    say(f"  {actors} actor(s), " + ("1 GPU each" if gpus else f"{resources['num_cpus']} CPU(s) each"))
    return ds.map_batches(  # [3] the encoder as a callable class: built once per actor
        Embedder,
        fn_constructor_kwargs={
            "backbone": backbone,
            "meta": meta,
            "parts": parts,
            "data": data,
            "threads": resources.get("num_cpus", 1),
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        **resources,
    )


def quiet_ray_data_logs() -> None:
    """Ray Data's INFO lines (execution plans, "execution finished") only with ``-v``; its warnings stay,
    but not the one that its progress bars are off: our own progress line replaces them."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        return
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # what RAY_DATA_LOG_LEVEL=WARNING sets
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


class Embedder:
    """A Ray Data actor: a batch of rows -> the same rows with ``feature`` (``D`` float32 each; NaN for
    an image that cannot be read) and ``_fault`` (why not; empty when it could)."""

    def __init__(
        self, backbone: nn.Module, meta: dict, parts: dict[str, Partition], data: DataConfig, threads: int
    ) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(int(threads))
        self.net = backbone.to(self.device).eval()
        self.dim = int(backbone.feature_dim)
        self.size = int(meta["image_size"])
        self.images = {name: images_of(data, p) for name, p in parts.items()}
        self.view = EvalView(self.size, int(meta["in_channels"]), meta["mean"], meta["std"])

    @torch.no_grad()
    def __call__(self, batch: pa.Table) -> pa.Table:
        where = zip(batch["partition"].to_pylist(), batch[_INDEX].to_pylist())
        pixels, boxes, good, faults = [], [], [], []
        for k, (name, i) in enumerate(where):
            try:
                image, (h, w) = self.images[name].item(i)
            except DataError as e:  # named on the driver, with the row's partition, line and Path
                faults.append(e.faults[0].message)
                continue
            pixels.append(torch.from_numpy(np.array(image)))
            boxes.append(eval_box(h, w, self.size))
            good.append(k)
            faults.append("")
        feats = np.full((len(batch), self.dim), np.nan, dtype=np.float32)  # B x D
        if good:
            x = torch.stack(pixels).to(self.device, non_blocking=True)  # b x C x S x S, uint8
            inputs = self.view(x, torch.stack(boxes).to(self.device))  # b x c x s x s, s = image_size
            feats[good] = self.net(inputs).float().cpu().numpy()  # b x D
        flat = pa.array(feats.reshape(-1), type=pa.float32())
        batch = batch.append_column(FEATURE, pa.FixedSizeListArray.from_arrays(flat, self.dim))
        return batch.append_column(_FAULT, pa.array(faults, type=pa.string()))


def stream_features(
    ds: Any, path: Path, schema: pa.Schema, total: int, skip_bad: bool, out: Path
) -> list[Fault]:
    """Stream the dataset's batches, in order, into the Parquet file ``path`` (what becomes ``out``);
    returns the rows left out. An unreadable image stops it (every one of its batch named), unless
    ``skip_bad``: then its row is left out."""
    skipped: list[Fault] = []
    done, t0, last = 0, time.monotonic(), time.monotonic()
    pending: list[pa.Table] = []
    with pq.ParquetWriter(str(path), schema) as writer:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            done += len(batch)
            bad = pc.not_equal(batch[_FAULT], "")
            if pc.any(bad).as_py():
                faults = faults_of(batch.filter(bad))
                if not skip_bad:
                    raise DataError(
                        faults,
                        f"unreadable image(s), nothing written to {out}: fix or remove them (moco data "
                        f"validate lists every one), or leave them out with --skip-bad",
                    )
                skipped += faults
                batch = batch.filter(pc.invert(bad))
            pending.append(batch.select(schema.names).cast(schema))
            if sum(len(t) for t in pending) >= ROW_GROUP:
                writer.write_table(pa.concat_tables(pending))
                pending = []
            if time.monotonic() - last >= PROGRESS_EVERY_S and done < total:
                say(f"  {done}/{total} images ({done / (time.monotonic() - t0):.0f} images/s)")
                last = time.monotonic()
        if pending:
            writer.write_table(pa.concat_tables(pending))
    seconds = time.monotonic() - t0
    say(f"  {done}/{total} images in {seconds:.0f} s ({done / max(seconds, 1e-9):.0f} images/s)")
    if len(skipped) == total:
        raise EmbedError("every image was unreadable: nothing to write")
    return skipped


def neighbour_count(asked: int, images: int) -> int:
    """``asked``, or as many as there are other images when ``--skip-bad`` left fewer (said)."""
    if images - 1 < 1:
        raise EmbedError(f"--neighbours {asked}: only {images} image is left, it has no neighbours")
    if asked >= images:
        say(f"  --neighbours {asked}: {images} images are left, so {images - 1} neighbours each")
    return min(asked, images - 1)


def faults_of(batch: pa.Table) -> list[Fault]:
    """The faults of a batch's unreadable rows, each naming partition, CSV line and file."""
    return [
        Fault(name, row, f"{name}/{rel}", message)
        for name, row, rel, message in zip(
            batch["partition"].to_pylist(),
            batch["row"].to_pylist(),
            batch["Path"].to_pylist(),
            batch[_FAULT].to_pylist(),
        )
    ]


def add_neighbours(path: Path, k: int) -> None:
    """Add ``neighbours`` (row indices in the file) and ``neighbour_cosine``: each row's ``k`` nearest
    other rows by cosine, most similar first; the similarities are computed ``NEIGHBOUR_CHUNK`` rows at
    a time (memory N x chunk, never N x N)."""
    table = pq.read_table(str(path))
    column = table[FEATURE].combine_chunks()
    dim = column.type.list_size
    feats = torch.from_numpy(column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).copy())  # N x D
    device = "cuda" if torch.cuda.is_available() else "cpu"
    unit = F.normalize(feats.to(device), dim=1)  # N x D
    cos, ids = nearest_neighbours(unit, unit, k + 1, chunk=NEIGHBOUR_CHUNK)  # N x (k+1), self among them
    n = ids.shape[0]
    is_self = ids == torch.arange(n, device=ids.device)[:, None]  # N x (k+1)
    is_self[~is_self.any(dim=1), -1] = True  # a duplicate image may outrank itself: drop the last instead
    keep = ~is_self
    ids, cos = ids[keep].view(n, k).cpu(), cos[keep].view(n, k).float().cpu()  # N x k
    table = table.append_column(NEIGHBOURS, _fixed_lists(ids.numpy().astype(np.int64), pa.int64()))
    table = table.append_column(COSINE, _fixed_lists(cos.numpy(), pa.float32()))
    pq.write_table(table, str(path), row_group_size=ROW_GROUP)


def _fixed_lists(values: np.ndarray, kind: pa.DataType) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=kind), values.shape[1])


__all__ = ["EmbedError", "EmbedResult", "embed", "label_values", "FEATURE", "NEIGHBOURS", "COSINE"]
