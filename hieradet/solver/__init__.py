"""Optimizer parameter groups, learning-rate schedules, the papers' per-size recipes and batch-size
rescaling for the LazyConfigs in ``configs/``; the configs' optimizers clip the gradient norm in their own
``step()``, and warn once when a config is built outside ``hieradet.engine.do_train`` (:mod:`hieradet.solver.loop`)."""

from .clip import SGD, AdamW, clip_gradient_norm
from .loop import OutsideLoopWarning, hieradet_loop, in_hieradet_loop, lost_outside_loop, warn_outside_loop
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
    "AdamW",
    "OutsideLoopWarning",
    "SGD",
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
    "hieradet_loop",
    "in_hieradet_loop",
    "layer_decay_rate",
    "layer_id",
    "lost_outside_loop",
    "rescale_batch",
    "size_recipe",
    "step_lr_multiplier",
    "step_milestones",
    "warn_outside_loop",
]
