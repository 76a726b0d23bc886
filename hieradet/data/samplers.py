"""A training sampler whose stream can start at any position: resuming continues it instead of restarting it.

detectron2's ``TrainingSampler`` / ``RepeatFactorTrainingSampler`` restart their stream at every launch, so a
resumed run sees other images than the uninterrupted one would. :class:`ResumableTrainingSampler` draws the same
kind of stream (per-epoch shuffles sharded over ranks; LVIS: stochastically rounded repeat factors), but the index
at every position is a function of ``(seed, position)``.
"""

from typing import Iterator, Optional, Tuple

import torch
from detectron2.utils import comm
from torch.utils.data import Sampler

__all__ = ["ResumableTrainingSampler", "find_sampler"]


class ResumableTrainingSampler(Sampler):
    """Infinite stream ``epoch_0 + epoch_1 + ...`` sharded over ranks like detectron2's ``TrainingSampler``,
    startable at any iteration: ``epoch_e`` is a shuffle of ``range(size)`` seeded by ``seed + e``.

    With ``repeat_factors`` it replaces detectron2's ``RepeatFactorTrainingSampler`` (LVIS): epoch ``e``
    repeats image ``i`` ``floor(r_i)`` times plus once more with probability ``r_i - floor(r_i)``
    (stochastic rounding, drawn from the ``seed + e`` generator), then shuffles, so every image is seen
    ``r_i`` times per epoch on average, as there.

    Args:
        size (int or sized): dataset length (> 0), or the dataset itself (LazyConfig-friendly); may be
            left out when ``repeat_factors`` is given.
        shuffle (bool): shuffle each epoch.
        seed (int): base seed; must be the same on all ranks (``None`` or negative: a random seed shared by
            the ranks, which makes the stream unrepeatable across runs unless :meth:`set_seed` fixes it).
        repeat_factors (sequence of float or Tensor): per-image repeat factors (> 0, at least one >= 1),
            e.g. ``RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(...)``.
    """

    def __init__(self, size=None, shuffle: bool = True, seed: Optional[int] = None, repeat_factors=None):
        if repeat_factors is not None:
            factors = torch.as_tensor(repeat_factors, dtype=torch.float64).flatten()
            if factors.numel() == 0 or not bool(torch.isfinite(factors).all()) or bool((factors <= 0).any()):
                raise ValueError(
                    "ResumableTrainingSampler(repeat_factors=) needs finite positive factors, one per image"
                )
            if not bool((factors >= 1).any()):
                raise ValueError("ResumableTrainingSampler(repeat_factors=) needs at least one factor >= 1")
            if size is None:
                size = factors.numel()
        if hasattr(size, "__len__"):
            size = len(size)
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"ResumableTrainingSampler(size=) expects a positive int, got {size!r}")
        if repeat_factors is not None and factors.numel() != size:
            raise ValueError(f"ResumableTrainingSampler: {factors.numel()} repeat factors for a dataset of {size}")
        self._size = size
        self._shuffle = shuffle
        self._seed_given = seed is not None and int(seed) >= 0
        self._seed = int(seed) if self._seed_given else int(comm.shared_random_seed())
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()
        self._start = 0  # global stream position of the first yielded index
        if repeat_factors is not None:
            self._int_part = torch.floor(factors)
            self._frac_part = factors - self._int_part
        else:
            self._int_part = self._frac_part = None

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def seed_given(self) -> bool:
        """Whether the seed was given (``False``: drawn at random when the sampler was built)."""
        return self._seed_given

    def set_seed(self, seed: int) -> None:
        """Fixes the base seed (before iterating; the same on all ranks)."""
        self._seed, self._seed_given = int(seed), True

    def set_start_iter(self, start_iter: int, batch_size_per_rank: int) -> None:
        """Starts the stream where iteration ``start_iter`` of an uninterrupted run would be."""
        if start_iter < 0 or batch_size_per_rank <= 0:
            raise ValueError(f"need start_iter >= 0, batch_size_per_rank > 0, got {start_iter}, {batch_size_per_rank}")
        self._start = start_iter * batch_size_per_rank * self._world_size

    def set_start_position(self, local_position: int) -> None:
        """Starts the stream at this rank's ``local_position``-th item (0 = the first)."""
        if local_position < 0:
            raise ValueError(f"need local_position >= 0, got {local_position}")
        self._start = int(local_position) * self._world_size

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    def _generator(self, e: int) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(self._seed + e)
        return g

    def _counts(self, g: torch.Generator) -> torch.Tensor:
        """Copies of each image in an epoch: its repeat factor, stochastically rounded."""
        return (self._int_part + (torch.rand(self._size, generator=g, dtype=torch.float64) < self._frac_part)).long()

    def _epoch_indices(self, g: torch.Generator) -> torch.Tensor:
        if self._int_part is None:
            return torch.arange(self._size)
        return torch.repeat_interleave(torch.arange(self._size), self._counts(g))

    def _epoch(self, e: int):
        g = self._generator(e)
        indices = self._epoch_indices(g)
        if self._shuffle:
            indices = indices[torch.randperm(len(indices), generator=g)]
        return indices.tolist()

    def _epoch_len(self, e: int) -> int:
        if self._int_part is None:
            return self._size
        return int(self._counts(self._generator(e)).sum())

    def __iter__(self) -> Iterator[int]:
        for _, index in self.iter_positions():
            yield index

    def iter_positions(self, start: Optional[int] = None) -> Iterator[Tuple[int, int]]:
        """Yields ``(stream position, dataset index)`` of this rank, from global position ``start`` (default: the
        one :meth:`set_start_iter` / :meth:`set_start_position` chose) plus the rank, in steps of the world size."""
        pos = (self._start if start is None else int(start)) + self._rank
        if self._int_part is None:
            epoch, offset = pos // self._size, (pos // self._size) * self._size
        else:  # epochs differ in length: walk to the one holding `pos` (cheap: one rand per epoch)
            epoch, offset = 0, 0
            n = self._epoch_len(0)
            while pos >= offset + n:
                offset, epoch = offset + n, epoch + 1
                n = self._epoch_len(epoch)
        perm = self._epoch(epoch)
        while True:
            while pos - offset >= len(perm):
                offset += len(perm)
                epoch += 1
                perm = self._epoch(epoch)
            yield pos, perm[pos - offset]
            pos += self._world_size


def find_sampler(data_loader) -> Optional[ResumableTrainingSampler]:
    """The :class:`ResumableTrainingSampler` inside a detectron2 train loader (``None`` if it has none)."""
    seen, todo = set(), [data_loader]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or obj is None:
            continue
        seen.add(id(obj))
        if isinstance(obj, ResumableTrainingSampler):
            return obj
        for attr in ("sampler", "dataset", "batch_sampler"):
            todo.append(getattr(obj, attr, None))
    return None
