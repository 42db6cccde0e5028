"""Input pipelines: two augmented views per image, reproducible for exact resume.

The augmentation of image ``i`` in epoch ``e`` is drawn from an RNG seeded with ``(seed, e, i)``, so
it does not depend on which DataLoader worker draws it, nor on whether the workers were restarted by
a resume or a replaced Ray worker. The sampler shards the (seeded, per-epoch) permutation across
ranks and drops the ragged tail so that every rank sees the same batch size (shuffle BN and the
all-gather before enqueue need that).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .augment import TwoViews, build_eval_transform, build_pretrain_transform
from .config import DataConfig, ExperimentConfig
from .data import ImageDataset, Partition


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


class PretrainViews(Dataset):
    """``(query view, key view)`` of image ``i``; the randomness is a function of (seed, epoch, i)."""

    def __init__(self, images: ImageDataset, views: Callable, seed: int = 0) -> None:
        self.images, self.views, self.seed = images, views, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, epoch = key
        img, _ = self.images[i]
        # The transforms draw from the CPU's default generator: seed that one only, and give its state
        # back. (torch.manual_seed would reseed every CUDA generator too: with no loader workers, the
        # shuffle-BN permutation on the GPU would become a function of the last image.)
        cpu = torch.random.default_generator
        state = cpu.get_state()
        cpu.manual_seed(hash((self.seed, epoch, i)) & 0x7FFF_FFFF_FFFF_FFFF)
        try:
            return self.views(img)
        finally:
            cpu.set_state(state)


def _loader_kwargs(num_workers: int, pin_memory: bool) -> dict:
    kw: dict = {"num_workers": num_workers, "pin_memory": pin_memory}
    if num_workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=4)
    return kw


def pretrain_loader(
    cfg: ExperimentConfig,
    partition: Partition,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """Batches of ``(im_q, im_k)`` for one rank; batch size = global batch / world size."""
    images = ImageDataset(partition, cfg.data.channels, cache=cfg.data.cache_decoded)
    if cfg.data.cache_decoded:
        images.preload()  # decode once, before the workers fork
    transform = build_pretrain_transform(
        cfg.augment.recipe, cfg.data.image_size, cfg.data.channels, cfg.data.normalization
    )
    dataset = PretrainViews(images, TwoViews(transform), seed=cfg.run.seed)
    per_rank = cfg.optim.batch_size // world_size
    sampler = ShardSampler(len(images), rank, world_size, seed=cfg.run.seed)
    if len(sampler) < per_rank:
        raise ValueError(
            f"partition {partition.name!r} has {len(images)} images: fewer than one batch of "
            f"{per_rank} per worker; lower optim.batch_size"
        )
    return DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        drop_last=True,
        # its own RNG: worker seeds must not consume the global RNG, whose state is in the checkpoint
        generator=torch.Generator().manual_seed(cfg.run.seed),
        **_loader_kwargs(cfg.data.num_workers, pin_memory),
    )


def eval_loader(
    data: DataConfig,
    partition: Partition,
    batch_size: int = 256,
    pin_memory: bool = False,
    transform: Callable | None = None,
) -> DataLoader:
    """Deterministic, non-augmented batches of ``(image, index)`` in CSV order.

    ``transform`` defaults to ``build_eval_transform(data.image_size, data.channels)``; a pulled encoder
    passes its own (the same, with the normalisation recorded in its package).
    """
    images = ImageDataset(
        partition,
        data.channels,
        transform=transform or build_eval_transform(data.image_size, data.channels, data.normalization),
        cache=data.cache_decoded,
    )
    if data.cache_decoded:
        images.preload()
    return DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=0, pin_memory=pin_memory)


def steps_per_epoch(n_images: int, cfg: ExperimentConfig) -> int:
    per_rank_images = n_images // cfg.scaling.workers
    steps = per_rank_images // (cfg.optim.batch_size // cfg.scaling.workers)
    if cfg.run.max_steps_per_epoch:
        steps = min(steps, cfg.run.max_steps_per_epoch)
    return max(1, steps)


def queue_size_warning(n_images: int, cfg: ExperimentConfig) -> str | None:
    """A warning when the queue holds as many keys as there are training images. The queue keeps the
    last ``queue_size`` keys and an image comes back once per epoch: with K >= N, every image's own key
    from its previous epoch is still queued, a negative against its own positive."""
    k = cfg.moco.queue_size
    if n_images <= 0 or k < n_images:
        return None
    suggestion = 1 << max(0, (n_images // 4).bit_length() - 1)  # a power of two at most N/4
    return (
        f"moco.queue_size={k} is not smaller than the {n_images} training images: every image's own key "
        f"from its previous epoch is still in the queue, as a negative against itself. Use a queue well "
        f"below the training set size (e.g. moco.queue_size={suggestion})"
    )


__all__ = [
    "ShardSampler",
    "PretrainViews",
    "pretrain_loader",
    "eval_loader",
    "steps_per_epoch",
    "queue_size_warning",
]
