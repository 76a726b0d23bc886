"""The papers' per-size recipes, the epoch-based schedule the configs record, and batch-size rescaling.

- :data:`HIERADET_RECIPES` / :data:`VITDET_RECIPES`: lr, drop path and layer decay per backbone size (Bolya et
  al. 2024 Tab. 16 for HieraDet B/B+/L/H, our extrapolation for T/S; ViTDet's own recipe for ViT-B/L/H). The
  yacs builders use them for ``-1`` ("the size's default"); a test checks the LazyConfigs give the same.
- :func:`epoch_schedule`: ``train.max_iter`` and the step lr multiplier from epochs, recorded in
  ``train.recipe`` (epochs, images per epoch, total batch size) so the schedule can be rescaled later.
- :func:`rescale_batch`: the recipe at another total batch size, lr (linear scaling), iterations, milestones,
  warm-up, evaluation and checkpoint periods together; :func:`apply_total_batch_size` is what
  ``hieradet.engine.do_train`` runs (``train.total_batch_size=N`` on the command line), and warns when only
  ``dataloader.train.total_batch_size`` was changed.
"""

import logging
import warnings
from typing import Any, Dict, Optional, Sequence

from .schedule import STEP_MILESTONES, epochs_to_iters, step_lr_multiplier

__all__ = [
    "HIERADET_RECIPES",
    "VITDET_RECIPES",
    "apply_total_batch_size",
    "epoch_schedule",
    "rescale_batch",
    "size_recipe",
]

logger = logging.getLogger(__name__)

# Bolya et al. 2024, Tab. 16 (COCO; LVIS lr in App. A.3 is set by the LVIS configs). T and S are not in the
# paper: our extrapolation (configs/COCO/mask_rcnn_hieradet_{t,s}_100ep.py say why).
HIERADET_RECIPES = {
    "T": dict(lr=1.4e-4, drop_path_rate=0.1, lr_decay_rate=0.75, weight_decay=0.1),
    "S": dict(lr=1.4e-4, drop_path_rate=0.15, lr_decay_rate=0.8, weight_decay=0.1),
    "B": dict(lr=1.4e-4, drop_path_rate=0.2, lr_decay_rate=0.85, weight_decay=0.1),
    "B+": dict(lr=7e-5, drop_path_rate=0.3, lr_decay_rate=0.85, weight_decay=0.1),
    "L": dict(lr=1.2e-4, drop_path_rate=0.45, lr_decay_rate=0.9, weight_decay=0.1),
    "H": dict(lr=6e-5, drop_path_rate=0.55, lr_decay_rate=0.925, weight_decay=0.1),
}
# ViTDet (Li et al. 2022), COCO: detectron2 projects/ViTDet configs.
VITDET_RECIPES = {
    "B": dict(lr=1e-4, drop_path_rate=0.1, lr_decay_rate=0.7, weight_decay=0.1),
    "L": dict(lr=1e-4, drop_path_rate=0.4, lr_decay_rate=0.8, weight_decay=0.1),
    "H": dict(lr=1e-4, drop_path_rate=0.5, lr_decay_rate=0.9, weight_decay=0.1),
}
_RECIPES = {"hieradet": HIERADET_RECIPES, "vitdet": VITDET_RECIPES}


def size_recipe(family: str, size: str) -> Dict[str, float]:
    """The recipe of backbone ``family`` ("hieradet" or "vitdet") at ``size`` (a copy)."""
    if family not in _RECIPES:
        raise ValueError(f"unknown backbone family {family!r}; choose from {list(_RECIPES)}")
    if size not in _RECIPES[family]:
        raise ValueError(f"unknown {family} size {size!r}; choose from {list(_RECIPES[family])}")
    return dict(_RECIPES[family][size])


def epoch_schedule(
    train,
    dataloader,
    epochs: float,
    images_per_epoch: int,
    warmup_iters: int = 250,
    fractions: Sequence[float] = STEP_MILESTONES,
):
    """Sets ``train.max_iter`` for ``epochs`` at the loader's total batch size, records the schedule in
    ``train.recipe`` and returns the step-decay ``lr_multiplier`` LazyConfig.

    Args:
        train, dataloader: the config's ``train`` and ``dataloader`` (edited in place / read).
        epochs (float): passes over the training set.
        images_per_epoch (int): images in one epoch (``COCO_TRAIN_IMAGES``, ``LVIS_TRAIN_IMAGES``).
        warmup_iters (int): linear warm-up in iterations at this batch size.
        fractions (tuple[float]): where the lr drops 10x, as fractions of training.
    """
    batch = dataloader.train.total_batch_size
    train.max_iter = epochs_to_iters(epochs, images_per_epoch, batch)
    train.recipe = dict(epochs=epochs, images_per_epoch=images_per_epoch, total_batch_size=batch)
    if "total_batch_size" not in train:
        train.total_batch_size = None  # set on the command line to rescale the recipe (rescale_batch)
    return step_lr_multiplier(train.max_iter, warmup_iters=warmup_iters, fractions=fractions)


def _scale_period(value: int, ratio: float) -> int:
    return max(1, round(value * ratio))


def _rescale_schedulers(node: Any, ratio: float) -> int:
    """Scales every ``milestones`` / ``num_updates`` in the lr-multiplier LazyConfig ``node`` by ``ratio``;
    returns how many schedulers were changed. Warm-up lengths are fractions of training and stay."""
    changed = 0
    if hasattr(node, "keys"):
        if "milestones" in node:
            node.milestones = [max(1, round(m * ratio)) for m in node.milestones]
            changed += 1
        if "num_updates" in node:
            node.num_updates = max(1, round(node.num_updates * ratio))
        for key in list(node.keys()):
            changed += _rescale_schedulers(node[key], ratio)
    return changed


def rescale_batch(cfg, total_batch_size: int):
    """Edits ``cfg`` in place to train the same recipe at ``total_batch_size`` images per step; returns ``cfg``.

    The linear scaling rule: lr x (new / old); iterations, lr milestones, eval and checkpoint periods x (old /
    new), so the same number of epochs is trained with the drops at the same epochs; the warm-up (a fraction of
    training) covers the same number of images. Iterations are recomputed from ``train.recipe`` when the config
    records one (exactly what the config would give at that batch size).

    Args:
        cfg: a loaded LazyConfig with ``dataloader.train.total_batch_size``, ``optimizer.lr``, ``train.max_iter``
            and ``lr_multiplier``.
        total_batch_size (int): images per step over all GPUs.
    """
    if not isinstance(total_batch_size, int) or isinstance(total_batch_size, bool) or total_batch_size <= 0:
        raise ValueError(f"total_batch_size must be a positive integer, got {total_batch_size!r}")
    old = cfg.dataloader.train.total_batch_size
    if total_batch_size == old:
        return cfg
    factor = total_batch_size / old
    old_iter = cfg.train.max_iter
    recipe = cfg.train.get("recipe") or {}
    if recipe.get("epochs") and recipe.get("images_per_epoch"):
        new_iter = epochs_to_iters(recipe["epochs"], recipe["images_per_epoch"], total_batch_size)
    else:
        new_iter = max(1, round(old_iter / factor))
    ratio = new_iter / old_iter
    if "lr_multiplier" in cfg and _rescale_schedulers(cfg.lr_multiplier, ratio) == 0:
        raise ValueError(
            "rescale_batch: lr_multiplier has no `milestones`; cannot tell how to stretch this schedule "
            f"({cfg.lr_multiplier.get('_target_')})"
        )
    cfg.optimizer.lr = cfg.optimizer.lr * factor
    cfg.train.max_iter = new_iter
    if cfg.train.get("eval_period"):
        cfg.train.eval_period = _scale_period(cfg.train.eval_period, ratio)
    if cfg.train.get("checkpointer") and cfg.train.checkpointer.get("period"):
        cfg.train.checkpointer.period = _scale_period(cfg.train.checkpointer.period, ratio)
    cfg.dataloader.train.total_batch_size = total_batch_size
    return cfg


def _epochs(cfg, batch: int) -> Optional[float]:
    images = (cfg.train.get("recipe") or {}).get("images_per_epoch")
    return cfg.train.max_iter * batch / images if images else None


def apply_total_batch_size(cfg):
    """The batch-size hook of ``do_train``: rescales the recipe to ``train.total_batch_size`` when that is set,
    and warns when ``dataloader.train.total_batch_size`` alone differs from the recipe's (the schedule then
    covers another number of epochs). Idempotent; returns ``cfg``."""
    train = cfg.train
    recipe = train.get("recipe") or {}
    loader_batch = cfg.dataloader.train.total_batch_size
    recipe_batch = recipe.get("total_batch_size", loader_batch)
    target = train.get("total_batch_size")
    if target is not None and target != recipe_batch:
        if loader_batch != recipe_batch:
            raise ValueError(
                f"train.total_batch_size={target} and dataloader.train.total_batch_size={loader_batch} both change "
                f"the recipe's batch of {recipe_batch}; set only train.total_batch_size (it rescales lr and schedule)"
            )
        old_lr, old_iter = cfg.optimizer.lr, train.max_iter
        rescale_batch(cfg, target)
        if "recipe" in train:
            train.recipe.total_batch_size = target  # the schedule now describes this batch size (idempotent)
        # a warning so that it shows without a configured "hieradet" logger: the recipe changed on request
        logger.warning(
            "train.total_batch_size=%d: lr %.3g -> %.3g, max_iter %d -> %d (schedule, warm-up and periods rescaled)",
            target, old_lr, cfg.optimizer.lr, old_iter, train.max_iter,
        )  # fmt: skip
    elif loader_batch != recipe_batch:
        epochs, planned = _epochs(cfg, loader_batch), recipe.get("epochs")
        warnings.warn(
            f"dataloader.train.total_batch_size={loader_batch} differs from the recipe's {recipe_batch}, but lr and "
            f"schedule were not rescaled: {train.max_iter} iterations now cover {epochs:.3g} epochs instead of "
            f"{planned:g}, at lr {cfg.optimizer.lr:.3g}. To run the recipe at {loader_batch} images per step, set "
            f"train.total_batch_size={loader_batch} instead (rescales lr, iterations, milestones and warm-up).",
            UserWarning,
            stacklevel=2,
        )
    return cfg
