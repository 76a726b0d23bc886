"""A warning when a hieradet LazyConfig is built by a training loop other than ``hieradet.engine.do_train``.

Most of a config's recipe travels with what the config instantiates (the model, the optimizer, which also clips
the gradient norm, the loaders, the lr schedule), so detectron2's own ``tools/lazyconfig_train_net.py`` or another
project's loop gets it. A few settings are applied by ``do_train`` alone: ``train.total_batch_size`` (rescaling lr
and schedule), ``train.seed`` (the seeded, exactly resumable data stream and per-step RNG) and the input guards.
The configs' parameter groups (:func:`hieradet.solver.get_optimizer_params`, built by every training loop right
after the model) check for them and warn once, naming what is lost and what to call instead. ``do_train`` builds
inside :func:`hieradet_loop`, where the check stays silent.
"""

import contextlib
import threading
import warnings
from typing import List, Optional

from torch import nn

__all__ = ["OutsideLoopWarning", "hieradet_loop", "in_hieradet_loop", "lost_outside_loop", "warn_outside_loop"]

_STATE = threading.local()


class OutsideLoopWarning(UserWarning):
    """A hieradet config was built outside ``hieradet.engine.do_train``, and settings only that loop applies
    are not applied."""


@contextlib.contextmanager
def hieradet_loop():
    """Marks the current thread as hieradet's training loop while the block runs (nests)."""
    _STATE.depth = getattr(_STATE, "depth", 0) + 1
    try:
        yield
    finally:
        _STATE.depth -= 1


def in_hieradet_loop() -> bool:
    """Whether the current thread is inside :func:`hieradet_loop`."""
    return getattr(_STATE, "depth", 0) > 0


def lost_outside_loop(
    model: Optional[nn.Module] = None,
    total_batch_size: Optional[int] = None,
    loader_batch_size: Optional[int] = None,
    seed: Optional[int] = None,
) -> List[str]:
    """What a loop other than ``do_train`` does not apply, each with the call that applies it; empty if nothing.

    Args:
        model: the model being trained (its input guard is checked), or None.
        total_batch_size (int or None): the config's ``train.total_batch_size``.
        loader_batch_size (int or None): the config's ``dataloader.train.total_batch_size``.
        seed (int or None): the config's ``train.seed`` (None or negative: unset).
    """
    lost = []
    if total_batch_size is not None and loader_batch_size is not None and total_batch_size != loader_batch_size:
        lost.append(
            f"train.total_batch_size={total_batch_size}: the train loader still gives {loader_batch_size} images "
            "per step, at the lr and schedule of that batch; call hieradet.solver.apply_total_batch_size(cfg) "
            "before building anything (it rescales batch, lr, iterations, milestones and warm-up)"
        )
    if seed is not None and seed >= 0:
        lost.append(
            f"train.seed={seed}: the seeded data stream and per-step RNG that make --resume repeat the "
            "uninterrupted run; register hieradet.engine.hooks.DeterministicResumeHook(seed=...) with the trainer"
        )
    if model is not None and getattr(model, "_hieradet_input_guard", None) is None:
        lost.append(
            "the input guards (a NaN/inf image, or one larger than the backbone's square_pad, stops the run naming "
            "it): call hieradet.engine.guards.install_input_guard(model) after building the model"
        )
    return lost


def warn_outside_loop(**settings) -> None:
    """Warns (:class:`OutsideLoopWarning`, once for all) when called outside :func:`hieradet_loop` and
    :func:`lost_outside_loop` of ``settings`` is not empty."""
    if in_hieradet_loop():
        return
    lost = lost_outside_loop(**settings)
    if lost:
        items = "".join(f"\n  * {line}" for line in lost)
        warnings.warn(
            "this hieradet config is being built outside hieradet.engine.do_train, which alone applies:"
            f"{items}\nTrain with hieradet's tools/lazyconfig_train_net.py (or call hieradet.engine.do_train(cfg)) "
            "to get all of the recipe.",
            OutsideLoopWarning,
            stacklevel=3,
        )
