"""Optimizer parameter groups, learning-rate schedules, the papers' per-size recipes and batch-size
rescaling for the LazyConfigs in ``configs/``."""

from .clip import clip_gradient_norm
from .lr_decay import layer_decay_rate, layer_id
from .param_groups import (
    NO_WEIGHT_DECAY_KEYS,
    VITDET_NO_WEIGHT_DECAY_KEYS,
    find_num_blocks,
    get_optimizer_params,
)
from .recipes import (
    HIERADET_RECIPES,
    VITDET_RECIPES,
    apply_total_batch_size,
    epoch_schedule,
    rescale_batch,
    size_recipe,
)
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
    "HIERADET_RECIPES",
    "LVIS_TRAIN_IMAGES",
    "NO_WEIGHT_DECAY_KEYS",
    "STEP_MILESTONES",
    "VITDET_NO_WEIGHT_DECAY_KEYS",
    "VITDET_RECIPES",
    "apply_total_batch_size",
    "clip_gradient_norm",
    "epoch_schedule",
    "epochs_to_iters",
    "find_num_blocks",
    "get_optimizer_params",
    "layer_decay_rate",
    "layer_id",
    "rescale_batch",
    "size_recipe",
    "step_lr_multiplier",
    "step_milestones",
]
