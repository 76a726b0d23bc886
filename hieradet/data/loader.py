"""A detectron2-style train loader whose batches are a function of ``(seed, position in the stream)``.

:func:`build_resumable_train_loader` takes the arguments of detectron2's ``build_detection_train_loader`` and
gives the same kind of batches (mapped dataset dicts; with ``aspect_ratio_grouping``, batches of images that are
all landscape or all portrait, as ``AspectRatioGroupedDataset`` forms them), with three differences that make
``--resume`` repeat an uninterrupted run exactly, with any number of workers:

* each stream item is mapped (augmented) with ``random`` / ``numpy`` / ``torch`` seeded from ``(seed, its
  stream position)`` and the caller's RNG states restored afterwards, whichever process maps it;
* the worker processes only map; batches are formed in the main process, in stream order;
* :meth:`ResumableTrainLoader.state_dict` is the grouping's state after the last batch handed out (the next
  stream position and the items waiting in each aspect-ratio group), which
  :class:`hieradet.engine.hooks.DeterministicResumeHook` saves in the checkpoint and restores on ``--resume``.
"""

import logging
import random
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm
from torch.utils.data import DataLoader, Dataset

from .samplers import ResumableTrainingSampler

__all__ = ["ResumableTrainLoader", "build_resumable_train_loader", "stream_seed"]

logger = logging.getLogger(__name__)

_MAX_RETRIES = 10


def stream_seed(seed: int, position: int) -> int:
    """The 32-bit RNG seed of stream position ``position`` (a well-mixed function of both)."""
    return int(np.random.SeedSequence([int(seed) % 2**63, int(position)]).generate_state(1)[0])


def _identity(x):
    return x


class _SeededMapDataset(Dataset):
    """``dataset[(position, index)]`` = ``mapper(dataset[index])`` with every RNG seeded from ``(seed, position)``;
    the RNG states of the calling process are restored afterwards. A mapper returning ``None`` (an image it
    rejects) is retried on other indices drawn from the same seed."""

    def __init__(self, dataset, mapper: Callable, seed: int):
        self._dataset, self._mapper, self._seed = dataset, mapper, int(seed)

    def __len__(self):
        return len(self._dataset)

    def __getitem__(self, item: Tuple[int, int]):
        position, index = item
        s = stream_seed(self._seed, position)
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            for attempt in range(_MAX_RETRIES):
                random.seed(s + attempt)
                np.random.seed((s + attempt) % 2**32)
                torch.default_generator.manual_seed(s + attempt)
                mapped = self._mapper(self._dataset[index])
                if mapped is not None:
                    return position, index, mapped
                index = random.Random(s + attempt).randrange(len(self._dataset))
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])
        raise RuntimeError(f"the mapper rejected {_MAX_RETRIES} images in a row at stream position {position}")


def _copy_state(state: Dict[str, Any]) -> Dict[str, Any]:
    return {"next": state["next"], "waiting": [list(g) for g in state["waiting"]]}


class _Positions:
    """The (position, index) items to map: the restored waiting items, then the sampler's stream."""

    def __init__(self, sampler: ResumableTrainingSampler, waiting: Sequence[Tuple[int, int]], next_position: int):
        self._sampler, self._waiting, self._next = sampler, list(waiting), next_position

    def __iter__(self):
        yield from self._waiting
        yield from self._sampler.iter_positions(self._next * self._sampler.world_size)


class ResumableTrainLoader:
    """Iterable of training batches (lists of mapped dicts); see the module docstring.

    Args:
        dataset: list of dataset dicts (or a map-style dataset of them).
        mapper (callable): dataset dict -> model input dict (e.g. detectron2's ``DatasetMapper``).
        sampler (ResumableTrainingSampler): the index stream (its seed also seeds the augmentations).
        batch_size (int): images per batch on this rank.
        aspect_ratio_grouping (bool): batch landscape (width > height) and other images separately, by the
            dataset dicts' ``width`` / ``height``, as detectron2's ``AspectRatioGroupedDataset``.
        num_workers (int): mapping processes (0: map in the main process).
        collate_fn (callable): applied to each batch (default: none, the list of dicts).
    """

    def __init__(
        self,
        dataset,
        mapper: Callable,
        sampler: ResumableTrainingSampler,
        batch_size: int,
        aspect_ratio_grouping: bool = True,
        num_workers: int = 0,
        collate_fn: Optional[Callable] = None,
    ):
        if not isinstance(sampler, ResumableTrainingSampler):
            raise TypeError(
                f"ResumableTrainLoader needs a hieradet.data.ResumableTrainingSampler, got {type(sampler).__name__}"
            )
        if batch_size <= 0 or num_workers < 0:
            raise ValueError(f"need batch_size > 0 and num_workers >= 0, got {batch_size}, {num_workers}")
        if isinstance(dataset, list):
            dataset = DatasetFromList(dataset, copy=False)
        self.dataset, self.mapper, self.sampler = dataset, mapper, sampler
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.aspect_ratio_grouping = bool(aspect_ratio_grouping)
        self.collate_fn = collate_fn
        self._start: Dict[str, Any] = {"next": 0, "waiting": [[], []]}
        self._state: Dict[str, Any] = self._start

    def set_start_iter(self, start_iter: int) -> None:
        """Starts where iteration ``start_iter`` of an uninterrupted run starts, with empty aspect-ratio groups
        (exact without grouping; with grouping, exact only if the groups were empty then: prefer
        :meth:`load_state_dict`)."""
        self.load_state_dict({"next": int(start_iter) * self.batch_size, "waiting": [[], []]})

    def state_dict(self) -> Dict[str, Any]:
        """The next stream position of this rank (items handed to the grouping so far) and the
        ``[position, index]`` items waiting in each aspect-ratio group, after the last batch handed out."""
        return {"next": self._state["next"], "waiting": [[list(x) for x in g] for g in self._state["waiting"]]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Makes the next iteration over the loader continue from ``state`` (before iterating)."""
        waiting = [[(int(p), int(i)) for p, i in g] for g in state["waiting"]]
        self._start = {"next": int(state["next"]), "waiting": waiting}
        self._state = _copy_state(self._start)

    def __iter__(self) -> Iterator[List[dict]]:
        start = _copy_state(self._start)
        restored = sorted(item for group in start["waiting"] for item in group)  # their order in the stream
        positions = _Positions(self.sampler, restored, start["next"])
        loader = DataLoader(
            _SeededMapDataset(self.dataset, self.mapper, self.sampler.seed),
            batch_size=None,
            sampler=positions,
            num_workers=self.num_workers,
            collate_fn=_identity,
            # its own generator: creating the iterator draws nothing from the global RNG
            generator=torch.Generator().manual_seed(self.sampler.seed),
        )
        # created here, not at the first next(): worker processes start when the caller iterates
        return self._batches(iter(loader), start["next"], len(restored))

    def _batches(self, items, next_local: int, n_restored: int) -> Iterator[List[dict]]:
        world, rank = self.sampler.world_size, self.sampler.rank
        groups: List[List[Tuple[int, int, dict]]] = [[], []]
        for k, (position, index, mapped) in enumerate(items):
            if k >= n_restored:
                next_local = (position - rank) // world + 1
            g = (0 if mapped["width"] > mapped["height"] else 1) if self.aspect_ratio_grouping else 0
            groups[g].append((position, index, mapped))
            if len(groups[g]) == self.batch_size:
                batch = [m for _, _, m in groups[g]]
                groups[g] = []
                self._state = {"next": next_local, "waiting": [[(p, i) for p, i, _ in grp] for grp in groups]}
                yield self.collate_fn(batch) if self.collate_fn is not None else batch


def build_resumable_train_loader(
    dataset,
    *,
    mapper: Callable,
    sampler: ResumableTrainingSampler,
    total_batch_size: int,
    aspect_ratio_grouping: bool = True,
    num_workers: int = 0,
    collate_fn: Optional[Callable] = None,
    **kwargs,
) -> ResumableTrainLoader:
    """``build_detection_train_loader``'s arguments, giving a :class:`ResumableTrainLoader` (per-rank batch
    ``total_batch_size / world size``). ``sampler`` must be a :class:`ResumableTrainingSampler`; other detectron2
    options (``seed``, ``prefetch_factor``, ...) are accepted and ignored: the sampler's seed decides."""
    if kwargs:
        logger.debug("build_resumable_train_loader ignores %s", sorted(kwargs))
    world = comm.get_world_size()
    if total_batch_size <= 0 or total_batch_size % world:
        raise ValueError(f"total_batch_size ({total_batch_size}) must be a positive multiple of the world size {world}")
    if sampler is None:
        raise ValueError("build_resumable_train_loader needs sampler=ResumableTrainingSampler(...)")
    return ResumableTrainLoader(
        dataset,
        mapper,
        sampler,
        total_batch_size // world,
        aspect_ratio_grouping=aspect_ratio_grouping,
        num_workers=num_workers,
        collate_fn=collate_fn,
    )
