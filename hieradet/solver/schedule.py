"""Epoch-based step schedules, written the way ViTDet's recipe is: iterations derived from epochs,
a 250-iteration linear warmup, and two 10x drops at 8/9 and 26/27 of training (88.9 and 96.3 of
100 epochs)."""

from typing import Sequence, Tuple

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

__all__ = [
    "COCO_TRAIN_IMAGES",
    "LVIS_TRAIN_IMAGES",
    "STEP_MILESTONES",
    "epochs_to_iters",
    "step_milestones",
    "step_lr_multiplier",
]

# Images per epoch, rounded as ViTDet does: COCO train2017 has 118,287 images, LVIS v1 train 100,170.
COCO_TRAIN_IMAGES = 118_000
LVIS_TRAIN_IMAGES = 100_000
# Fractions of training after which the lr drops 10x (ViTDet: iterations 163889 and 177546 of 184375).
STEP_MILESTONES = (8 / 9, 26 / 27)


def epochs_to_iters(epochs: float, images_per_epoch: int, batch_size: int) -> int:
    """Iterations for ``epochs`` passes over ``images_per_epoch`` images at ``batch_size`` images per step."""
    if epochs <= 0 or images_per_epoch <= 0 or batch_size <= 0:
        raise ValueError(
            f"epochs, images_per_epoch and batch_size must be positive, got {epochs}, {images_per_epoch}, {batch_size}"
        )
    return max(1, round(epochs * images_per_epoch / batch_size))


def step_milestones(max_iter: int, fractions: Sequence[float] = STEP_MILESTONES) -> Tuple[int, ...]:
    """Iterations at which a step schedule of ``max_iter`` iterations decays (rounded ``fraction * max_iter``)."""
    if any(not 0 < f < 1 for f in fractions) or list(fractions) != sorted(fractions):
        raise ValueError(f"milestone fractions must be increasing and inside (0, 1), got {tuple(fractions)}")
    return tuple(round(f * max_iter) for f in fractions)


def step_lr_multiplier(
    max_iter: int,
    warmup_iters: int = 250,
    warmup_factor: float = 0.001,
    fractions: Sequence[float] = STEP_MILESTONES,
    gamma: float = 0.1,
):
    """LazyConfig of the step-decay lr multiplier (a detectron2 ``WarmupParamScheduler``) for ``max_iter``.

    Args:
        max_iter (int): training iterations (``train.max_iter``).
        warmup_iters (int): linear warmup length in iterations (capped at ``max_iter``).
        warmup_factor (float): lr factor at iteration 0 of the warmup.
        fractions (tuple[float]): where the lr drops, as fractions of ``max_iter``.
        gamma (float): factor of each drop.
    """
    if max_iter <= 0:
        raise ValueError(f"max_iter must be positive, got {max_iter}")
    values = [gamma**k for k in range(len(fractions) + 1)]
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=values,
            milestones=list(step_milestones(max_iter, fractions)),
            num_updates=max_iter,
        ),
        warmup_length=min(warmup_iters, max_iter) / max_iter,
        warmup_factor=warmup_factor,
    )
