"""Input pipelines: loader workers read uint8 images (a prepared store, or the files) and draw each
view's parameters; the views of the whole batch are made on the training device.

The augmentation of image ``i`` in epoch ``e`` is drawn from an RNG seeded with ``(seed, e, i)``, so
it does not depend on which DataLoader worker draws it, nor on whether the workers were restarted by
a resume or a replaced Ray worker. The sampler shards the (seeded, per-epoch) permutation across
ranks and drops the ragged tail so that every rank sees the same batch size (shuffle BN and the
all-gather before enqueue need that).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .augment import BatchViews, EvalView, draw_view, eval_box, normalization, recipe
from .config import ConfigError, DataConfig, ExperimentConfig
from .data import Partition
from .store import images_of

log = logging.getLogger(__name__)
_noted: set[tuple[int, int]] = set()


class ShardSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, epoch)`` pairs of this rank's shard of a seeded per-epoch permutation."""

    def __init__(
        self, n: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True
    ) -> None:
        if n < world_size:
            raise ValueError(f"{n} images cannot be sharded over {world_size} workers")
        self.n, self.rank, self.world, self.seed, self.shuffle = n, rank, world_size, seed, shuffle
        self.epoch, self.start = 0, 0
        self.per_rank = n // world_size  # drop the tail so that every rank has the same count

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch ``epoch`` from its ``start``-th sample on (a run resumed from a mid-epoch checkpoint
        skips what it has already trained on; the order of the epoch is the same)."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.per_rank - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        mine = order[: self.per_rank * self.world][self.rank :: self.world][self.start :]
        return iter([(int(i), self.epoch) for i in mine])


class PretrainSamples(Dataset):
    """``(uint8 image, query view's parameters, key view's parameters, i)`` of key ``(i, epoch)``; the
    parameters come from an RNG of its own seeded by ``(seed, epoch, i)`` (no global RNG is touched)."""

    def __init__(self, images, views_recipe, seed: int = 0) -> None:
        self.images, self.recipe, self.seed = images, views_recipe, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        i, epoch = key
        pixels, (h, w) = self.images.item(i)
        rng = random.Random(hash((self.seed, epoch, i)))
        q, k = draw_view(self.recipe, rng, h, w), draw_view(self.recipe, rng, h, w)
        return torch.tensor(pixels), q, k, i


class LabelledViews(Dataset):
    """``(uint8 image, one view's parameters, i)`` of row ``i`` in epoch ``epoch``: a supervised head's
    augmented training batches (the parameters drawn from ``(seed, epoch, i)``, as in pretraining)."""

    def __init__(self, images, views_recipe, seed: int, epoch: int) -> None:
        self.images, self.recipe, self.seed, self.epoch = images, views_recipe, seed, epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        pixels, (h, w) = self.images.item(i)
        rng = random.Random(hash((self.seed, self.epoch, i)))
        return torch.tensor(pixels), draw_view(self.recipe, rng, h, w), i


class EvalSamples(Dataset):
    """``(uint8 image, centre box, index)`` of row ``i``, in partition order."""

    def __init__(self, images, image_size: int) -> None:
        self.images, self.image_size = images, image_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        pixels, (h, w) = self.images.item(i)
        return torch.tensor(pixels), eval_box(h, w, self.image_size), i


class DeviceBatches:
    """A DataLoader's batches moved to ``device`` and turned into the model's inputs there by ``finish``."""

    def __init__(self, loader: DataLoader, finish: Callable, device: torch.device | str) -> None:
        self.loader, self.finish, self.device = loader, finish, torch.device(device)
        self.sampler, self.batch_size = loader.sampler, loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        for batch in self.loader:
            yield self.finish(*(t.to(self.device, non_blocking=True) for t in batch))


def loader_workers(asked: int, cpus: int) -> int:
    """DataLoader workers: as many as asked, at most the CPUs this process holds (noted once)."""
    if asked > cpus and (asked, cpus) not in _noted:
        _noted.add((asked, cpus))
        log.warning(
            "data.num_workers=%d but this worker holds %d CPU(s) (scaling.cpus_per_worker): using %d "
            "loader process(es)",
            asked,
            cpus,
            cpus,
        )
    return min(asked, cpus)


def _loader_kwargs(num_workers: int, device: torch.device, persistent: bool) -> dict:
    kw: dict = {"num_workers": num_workers, "pin_memory": device.type == "cuda"}
    if num_workers > 0:
        kw.update(persistent_workers=persistent, prefetch_factor=4)
    return kw


def check_partition_fits(cfg: ExperimentConfig, partition: Partition, world_size: int | None = None) -> None:
    """``partition`` holds what training on it needs, or a ``ConfigError`` names the partition, its size
    and the keys (drivers check it before Ray starts): each worker's share holds at least one batch
    (the incomplete batch is dropped: every rank must see the same batch size, so a smaller share
    would train on nothing), and a memory bank has more entries than the K negatives it draws."""
    w, n = world_size or cfg.scaling.workers, len(partition)
    if cfg.moco.mechanism == "memory_bank" and cfg.moco.queue_size >= n:
        raise ConfigError(
            f"moco.mechanism=memory_bank draws moco.queue_size={cfg.moco.queue_size} negatives from a bank "
            f"of the {n} images of partition {partition.name!r} ({partition.csv_path}); lower "
            f"moco.queue_size below {n}"
        )
    per_rank = cfg.optim.batch_size // w
    if n // w >= per_rank:
        return
    share = f", {n // w} per worker of scaling.workers={w}" if w > 1 else ""
    fix = f"lower optim.batch_size to at most {n // w * w}" if n // w >= 2 else "use fewer workers"
    raise ConfigError(
        f"partition {partition.name!r} ({partition.csv_path}) has {n} images{share}: fewer than one batch "
        f"of {per_rank} (optim.batch_size={cfg.optim.batch_size}{f' / {w} workers' if w > 1 else ''}), "
        f"and the incomplete batch is dropped; {fix}, or add images"
    )


def pretrain_loader(
    cfg: ExperimentConfig,
    partition: Partition,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
) -> DeviceBatches:
    """Batches of ``(im_q, im_k, index)`` on ``device`` for one rank (``index``: the images' rows in
    ``partition``); batch size = global batch / world size."""
    device = torch.device(device)
    data = cfg.data
    r = recipe(cfg.augment.recipe, data.image_size, data.channels)
    images = images_of(data, partition)
    per_rank = cfg.optim.batch_size // world_size
    check_partition_fits(cfg, partition, world_size)
    sampler = ShardSampler(len(images), rank, world_size, seed=cfg.run.seed)
    loader = DataLoader(
        PretrainSamples(images, r, seed=cfg.run.seed),
        batch_size=per_rank,
        sampler=sampler,
        drop_last=True,
        # its own RNG: worker seeds must not consume the global RNG, whose state is in the checkpoint
        generator=torch.Generator().manual_seed(cfg.run.seed),
        **_loader_kwargs(loader_workers(data.num_workers, cfg.scaling.cpus_per_worker), device, True),
    )
    views = BatchViews(r, *normalization(data.channels, data.normalization))
    return DeviceBatches(loader, lambda x, pq, pk, index: (*views.pair(x, pq, pk), index), device)


def eval_loader(
    data: DataConfig,
    partition: Partition,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    stats: tuple[Sequence[float], Sequence[float]] | None = None,
    cpus: int = 1,
) -> DeviceBatches:
    """Deterministic, non-augmented batches of ``(image, index)`` on ``device``, in partition order.

    ``stats`` (mean, std) default to ``data.normalization``'s; a pulled encoder passes its own.
    """
    device = torch.device(device)
    loader = DataLoader(
        EvalSamples(images_of(data, partition), data.image_size),
        batch_size=batch_size,
        shuffle=False,
        **_loader_kwargs(loader_workers(data.num_workers, cpus), device, False),
    )
    mean, std = stats or normalization(data.channels, data.normalization)
    view = EvalView(data.image_size, data.channels, mean, std)
    return DeviceBatches(loader, lambda x, boxes, index: (view(x, boxes), index), device)


def steps_per_epoch(n_images: int, cfg: ExperimentConfig) -> int:
    per_rank_images = n_images // cfg.scaling.workers
    steps = per_rank_images // (cfg.optim.batch_size // cfg.scaling.workers)
    if cfg.run.max_steps_per_epoch:
        steps = min(steps, cfg.run.max_steps_per_epoch)
    return max(1, steps)


def own_key_share(n_images: int, queue_size: int) -> float:
    """The share of images that meet their own key from the previous epoch still in the queue.

    The queue keeps the last ``K`` keys and each epoch is a fresh random order of the ``N`` images: an
    image at position ``u N`` of one epoch and ``v N`` of the next has its old key queued when
    ``(1 - u) + v < K / N``. Over uniform ``u, v`` that is ``r^2 / 2`` for ``r = K / N <= 1``,
    ``1 - (2 - r)^2 / 2`` for ``1 < r < 2``, and every image from ``r >= 2``.
    """
    r = queue_size / n_images
    if r <= 1:
        return r * r / 2
    return 1.0 - (2.0 - r) ** 2 / 2 if r < 2 else 1.0


def queue_size_warning(n_images: int, cfg: ExperimentConfig) -> str | None:
    """A warning when so large a share of the training set is queued that many images meet their own
    previous key as a negative against their positive (:func:`own_key_share`): from ``K > N / 2``, one
    image in eight. A quarter of the training set keeps it to one in thirty-two. The symmetric loss
    enqueues two keys of each image, so its queue spans half as many images."""
    k = cfg.moco.queue_size
    per_image = 2 if cfg.moco.symmetric else 1
    images = k // per_image
    if cfg.moco.mechanism != "moco" or n_images <= 0 or 2 * images <= n_images:
        return None
    suggestion = per_image << max(0, (n_images // 4).bit_length() - 1)  # a quarter of N at most
    return (
        f"moco.queue_size={k} holds the keys of {images / n_images:.0%} of the {n_images} training images: "
        f"about {own_key_share(n_images, images):.0%} of them find their own key from the previous epoch in "
        f"the queue, a negative against their own positive. Use a queue of at most a quarter of the "
        f"training set (e.g. moco.queue_size={suggestion})"
    )


__all__ = [
    "ShardSampler",
    "PretrainSamples",
    "LabelledViews",
    "EvalSamples",
    "DeviceBatches",
    "loader_workers",
    "check_partition_fits",
    "pretrain_loader",
    "eval_loader",
    "steps_per_epoch",
    "own_key_share",
    "queue_size_warning",
]
