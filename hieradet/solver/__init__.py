"""Optimizer parameter groups and learning-rate schedules for the LazyConfigs in ``configs/``."""

from .param_groups import NO_WEIGHT_DECAY_KEYS, find_num_blocks, get_optimizer_params
from .schedule import (
    COCO_TRAIN_IMAGES,
    LVIS_TRAIN_IMAGES,
    STEP_MILESTONES,
    epochs_to_iters,
    step_lr_multiplier,
    step_milestones,
)

__all__ = [
    "COCO_TRAIN_IMAGES",
    "LVIS_TRAIN_IMAGES",
    "NO_WEIGHT_DECAY_KEYS",
    "STEP_MILESTONES",
    "epochs_to_iters",
    "find_num_blocks",
    "get_optimizer_params",
    "step_lr_multiplier",
    "step_milestones",
]
