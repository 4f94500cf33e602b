"""DataLoaders that resume mid-epoch: a restarted run sees exactly the batches it had not yet seen.

Lightning saves the state of a training DataLoader that has ``state_dict`` / ``load_state_dict`` in
every checkpoint and restores it before the first batch of a resumed run. :class:`ResumableLoader`
saves the epoch and the number of batches handed out; on restore it skips those batches without
reading them, so the run continues with the next one, in the same order (the shuffle depends only on
the seed and the epoch). Each loader also draws its workers' seeds from its own generator instead of
torch's global one, so the global random state (dropout, augmentation) is consumed by training alone
and a checkpoint's copy of it continues the same sequence.

Lightning reads the batches of a loader with a length one at a time (it prefetches none), so at any
checkpoint the batches handed out are the batches trained on.
"""

from collections.abc import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset


def rank_and_world(trainer: L.Trainer | None) -> tuple[int, int]:
    """This process's global rank and the number of processes (0 and 1 outside a Trainer)."""
    return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)


class ResumableSampler(DistributedSampler):
    """This rank's share of a permutation that depends only on ``(seed, epoch)``.

    One process and ``W`` processes with a ``W`` times smaller batch see the same samples at every
    step: rank ``r`` takes positions ``r, r + W, ...`` of the permutation, so a global batch of DDP is
    a batch of the single process. Being a ``DistributedSampler``, Lightning keeps it under DDP and
    calls its ``set_epoch``.

    Args:
        dataset: the map-style dataset.
        shuffle: a new permutation each epoch (else the natural order).
        seed: seed of the permutations.
        rank: this process's rank.
        world_size: the number of processes.
        drop_last: drop the tail that does not split evenly across ranks (else pad by repeating).
    """

    def __init__(
        self, dataset: Dataset, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
        drop_last: bool = False,
    ):  # fmt: skip
        super().__init__(dataset, world_size, rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.skip = 0  # samples of this rank to leave out once, at the start of the next iteration

    def __iter__(self):
        indices = list(super().__iter__())[self.skip :]
        self.skip = 0
        return iter(indices)


class ShardSampler(DistributedSampler):
    """Every item exactly once across ranks, in order: rank ``r`` takes items ``r, r + W, ...``.

    For evaluation over whole splits (captioning metrics over every image): unlike
    :class:`ResumableSampler` it never pads with repeated items, so ranks may get one item less.
    Being a ``DistributedSampler``, Lightning keeps it under DDP. Arguments as for
    :class:`ResumableSampler` (``shuffle`` and ``drop_last`` are ignored).
    """

    def __init__(
        self, dataset: Dataset, shuffle: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
        drop_last: bool = False,
    ):  # fmt: skip
        super().__init__(dataset, world_size, rank, shuffle=False, seed=seed)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


class ResumableLoader(DataLoader):
    """A DataLoader whose position in the epoch is saved in checkpoints (Lightning's stateful protocol).

    It resumes a :class:`ResumableSampler` (map-style data, ``batch_size`` set) or an iterable dataset
    with a ``skip`` attribute that yields its batches itself (``batch_size=None``). The saved position
    applies only if the resumed run is in the same epoch: a checkpoint from the end of an epoch (also
    one cut short by ``limit_train_batches``) starts the next one afresh.

    Args:
        *args: as for ``DataLoader``.
        seed: seed of the generator that draws the workers' seeds (when no ``generator`` is given).
        epoch: the current epoch (the Trainer's); by default the sampler's.
        **kwargs: as for ``DataLoader``.
    """

    def __init__(self, *args, seed: int = 0, epoch: Callable[[], int] | None = None, **kwargs):
        kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
        super().__init__(*args, **kwargs)
        self.epoch = epoch
        self.handed_out = 0  # batches of the current iteration
        self._resume: tuple[int, int] | None = None  # (epoch, batches) from a checkpoint

    def current_epoch(self) -> int:
        return self.epoch() if self.epoch is not None else getattr(self.sampler, "epoch", 0)

    def __iter__(self):
        # A generator: this runs at the first batch, after Lightning has set the epoch.
        skip = 0
        if self._resume is not None:
            epoch, batches = self._resume
            skip = batches if epoch == self.current_epoch() else 0
            self._resume = None
        self._leave_out(skip)
        self.handed_out = skip
        for batch in super().__iter__():
            self.handed_out += 1
            yield batch

    def _leave_out(self, batches: int) -> None:
        if isinstance(self.dataset, IterableDataset):
            self.dataset.skip = batches
        elif isinstance(self.sampler, ResumableSampler):
            self.sampler.skip = batches * self.batch_size
        elif batches:
            raise TypeError("ResumableLoader resumes a ResumableSampler or an iterable dataset with `skip`.")

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.current_epoch(), "batches": self.handed_out}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (state["epoch"], state["batches"])


def trainer_epoch(owner: L.LightningDataModule) -> Callable[[], int]:
    """The current epoch of the DataModule's Trainer (0 outside one), for :class:`ResumableLoader`."""
    return lambda: owner.trainer.current_epoch if owner.trainer is not None else 0


def batched_loader(
    datamodule: L.LightningDataModule,
    dataset: Dataset,
    shuffle: bool,
    collate_fn=None,
    batch_size=None,
    sampler_class: type[DistributedSampler] = ResumableSampler,
):
    """The map-style loader the DataModules share: this rank's share of a ``(seed, epoch)`` permutation
    (natural order for evaluation), ``batch_size`` (default ``datamodule.batch_size``) items per
    batch, resumable mid-epoch.

    Training drops the last incomplete batch; the DataModule provides ``batch_size``, ``seed`` and
    ``num_workers``. ``sampler_class``: another sampler taking :class:`ResumableSampler`'s arguments
    (a subclass of it, or :class:`ShardSampler` for evaluation that sees every item exactly once).
    """
    rank, world = rank_and_world(datamodule.trainer)
    return ResumableLoader(
        dataset,
        batch_size=batch_size or datamodule.batch_size,
        sampler=sampler_class(dataset, shuffle, datamodule.seed, rank, world, drop_last=shuffle),
        drop_last=shuffle,
        collate_fn=collate_fn,
        num_workers=datamodule.num_workers,
        persistent_workers=datamodule.num_workers > 0,
        seed=datamodule.seed,
        epoch=trainer_epoch(datamodule),
    )
