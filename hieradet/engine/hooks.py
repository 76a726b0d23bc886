"""Training hooks and writers for exactly resumable, crash-safe runs.

* :class:`DeterministicResumeHook` makes ``trainer.train(start_iter, ...)`` after ``--resume`` repeat an
  uninterrupted run: it saves the train loader's stream state in every checkpoint and restores it, and re-seeds
  ``torch`` / ``numpy`` / ``random`` from ``(seed, iteration, rank)`` before every step (ROI sampling, drop path).
* :class:`PreemptionHook` turns a preemption / time-limit signal (recorded by
  :class:`hieradet.engine.cluster.PreemptionGuard`) into an exact checkpoint after the current step, then stops
  the loop with :class:`Preempted`.
* :func:`default_writers` is detectron2's, with ``metrics.json`` written by
  :class:`hieradet.checkpoint.atomic.AtomicJSONWriter` (whole lines only).
"""

import logging
import os
import random
from typing import Optional

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, TensorboardXWriter

from hieradet.checkpoint.atomic import AtomicJSONWriter
from hieradet.data.loader import ResumableTrainLoader
from hieradet.data.samplers import find_sampler

__all__ = ["DeterministicResumeHook", "Preempted", "PreemptionHook", "default_writers", "step_seed"]

logger = logging.getLogger(__name__)


def step_seed(seed: int, iteration: int, rank: int) -> int:
    """The RNG seed of training step ``iteration`` on ``rank``."""
    return (int(seed) * 1_000_003 + int(iteration) * 1009 + int(rank)) % (2**31)


def _batch_size_per_rank(data_loader) -> Optional[int]:
    for obj in (data_loader, getattr(data_loader, "dataset", None)):
        bs = getattr(obj, "batch_size", None)
        if isinstance(bs, int) and bs > 0:
            return bs
    return None


class DeterministicResumeHook(HookBase):
    """Makes ``trainer.train(start_iter, ...)`` repeat an uninterrupted run from ``start_iter`` on.

    With a :class:`hieradet.data.ResumableTrainLoader` (the configs' train loaders) the loader's state (next
    stream position, images waiting in the aspect-ratio groups) is kept after every step, saved with the
    trainer's state in each checkpoint (for all ranks) and restored before training, so the batches after a
    resume are the uninterrupted run's. With another loader that holds a
    :class:`hieradet.data.ResumableTrainingSampler` (e.g. detectron2's ``build_detection_train_loader``), the
    sampler is started at ``start_iter``: the stream continues, but worker RNGs and aspect-ratio buckets are
    not restored.

    Args:
        seed (int): base seed of the per-step re-seed, and of the sampler's stream if it was built without one.
        batch_size_per_rank (int): images per rank and iteration (default: read from the loader).
        checkpoint_period (int): gather the ranks' loader states only at the iterations a periodic checkpoint
            is saved (``(iter + 1) % period == 0`` and the last one); default: after every step.
    """

    def __init__(self, seed: int = 0, batch_size_per_rank: Optional[int] = None, checkpoint_period: int = 0):
        self._seed = int(seed)
        self._batch_size = batch_size_per_rank
        self._period = int(checkpoint_period or 0)
        self._states = None  # per-rank loader states of the last finished step
        self._loaded = None

    def _loader(self) -> Optional[ResumableTrainLoader]:
        loader = self.trainer.data_loader
        return loader if isinstance(loader, ResumableTrainLoader) else None

    def before_train(self):
        loader = self.trainer.data_loader
        sampler = find_sampler(loader)
        if sampler is None:
            raise TypeError(
                "DeterministicResumeHook needs the train loader to use hieradet.data.ResumableTrainingSampler "
                "(set dataloader.train.sampler)"
            )
        if not sampler.seed_given:  # e.g. the configs' loaders: the stream follows train.seed
            sampler.set_seed(self._seed)
        start_iter = self.trainer.start_iter
        resumable = self._loader()
        if resumable is not None:
            rank = comm.get_rank()
            if self._loaded is not None and start_iter > 0:
                if len(self._loaded) != comm.get_world_size():
                    n, world = len(self._loaded), comm.get_world_size()
                    raise ValueError(
                        f"the checkpoint was written by {n} process{'es' if n > 1 else ''} (its train loader state "
                        f"is per rank) and this run has {world}: an exact resume needs the same number, so resume "
                        f"with {n} process{'es' if n > 1 else ''} (GPUs) in all; or start a new run from these "
                        "weights (train.init_checkpoint=<the checkpoint>, a new train.output_dir, no --resume), whose "
                        "data stream and schedule start again"
                    )
                resumable.load_state_dict(self._loaded[rank])
            else:
                if start_iter > 0:
                    logger.warning(
                        "the checkpoint has no train loader state (an older checkpoint): the stream continues at "
                        "iteration %d with empty aspect-ratio groups",
                        start_iter,
                    )
                resumable.set_start_iter(start_iter)
        else:
            bs = self._batch_size or _batch_size_per_rank(loader)
            if bs is None:
                raise ValueError("cannot read the per-rank batch size from the train loader; pass batch_size_per_rank")
            sampler.set_start_iter(start_iter, bs)
        # Creating a DataLoader iterator draws a base seed from the global RNG (unless the loader has its own
        # generator, as ResumableTrainLoader's): do it now, before the per-step re-seed, so that the draw cannot
        # shift the random numbers of the first step after a resume. (self.trainer is a weakref proxy: read the
        # property through it, not through type(self.trainer), which is the proxy type.)
        try:
            _ = self.trainer._data_loader_iter
        except AttributeError:  # a trainer without detectron2's lazily created iterator
            pass

    def before_step(self):
        s = step_seed(self._seed, self.trainer.iter, comm.get_rank())
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)

    def after_step(self):
        loader = self._loader()
        if loader is None:
            return
        it, last = self.trainer.iter, self.trainer.max_iter - 1
        if comm.get_world_size() == 1:
            self._states = [loader.state_dict()]
        elif not self._period or (it + 1) % self._period == 0 or it >= last:
            self._states = comm.all_gather(loader.state_dict())

    def collect(self) -> None:
        """Keeps the ranks' loader states of the step that just finished now (all ranks must call it), for a
        checkpoint written outside the periodic ones."""
        loader = self._loader()
        if loader is not None:
            self._states = comm.all_gather(loader.state_dict()) if comm.get_world_size() > 1 else [loader.state_dict()]

    def state_dict(self):
        return {"loader_states": self._states} if self._states is not None else {}

    def load_state_dict(self, state_dict):
        self._loaded = state_dict.get("loader_states")


class Preempted(BaseException):
    """Raised out of the training loop by :class:`PreemptionHook` after the preemption checkpoint was written (a
    ``BaseException``, as ``SystemExit``: not a training error)."""

    def __init__(self, iteration: int, checkpoint: str):
        super().__init__(f"preempted after iteration {iteration}; exact checkpoint {checkpoint}")
        self.iteration, self.checkpoint = iteration, checkpoint


class PreemptionHook(HookBase):
    """After each step, if the preemption signal arrived (on any rank): writes the checkpoint of this iteration
    (unless the periodic checkpointer just wrote it; with the ranks' train loader states, so that ``--resume``
    repeats the uninterrupted run) and raises :class:`Preempted`. The step in progress when the signal came is
    finished first (and an evaluation or checkpoint write that follows it), so every run makes progress. At the
    last iteration it does nothing: the run ends normally.

    Args:
        checkpointer: the run's checkpointer (it writes on the main process only).
        guard: an object whose ``requested`` attribute becomes true on the signal
            (:class:`hieradet.engine.cluster.PreemptionGuard`).
    """

    def __init__(self, checkpointer, guard):
        self._checkpointer = checkpointer
        self._guard = guard

    def _requested(self) -> bool:
        flag = bool(self._guard.requested)
        if comm.get_world_size() > 1:  # the ranks stop after the same step
            flag = any(comm.all_gather(flag))
        return flag

    def after_step(self):
        if not self._requested():
            return
        it = self.trainer.iter
        if it + 1 >= self.trainer.max_iter:
            logger.info("preemption signal at the last iteration: finishing the run")
            return
        for h in self.trainer._hooks:
            if isinstance(h, DeterministicResumeHook):
                h.collect()
        name = f"model_{it:07d}"
        ckpt = self._checkpointer
        if comm.is_main_process():
            last = ""
            if ckpt.has_checkpoint():
                last = os.path.basename(ckpt.get_checkpoint_file())
            if last != f"{name}.pth":
                ckpt.save(name, iteration=it)
        comm.synchronize()
        raise Preempted(it, os.path.join(ckpt.save_dir, f"{name}.pth"))


def default_writers(output_dir: str, max_iter: Optional[int] = None):
    """detectron2's ``default_writers`` (console, ``metrics.json``, TensorBoard), with ``metrics.json``
    appended by :class:`AtomicJSONWriter`."""
    os.makedirs(output_dir, exist_ok=True)
    return [
        CommonMetricPrinter(max_iter),
        AtomicJSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardXWriter(output_dir),
    ]
