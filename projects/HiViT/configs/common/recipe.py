"""The HiViT paper's detection recipe (App. A, "Experimental Details for Down-stream Tasks") as helpers.

AdamW with layer-wise lr decay 0.9 (the whole hierarchical patch embedding is layer 0, main-stage block i is
layer i + 1, as in the authors' code), weight decay 0.05 (the authors' config), 16 images per batch, and
step decay x0.1: 1x = 12 epochs with drops after epochs 9 and 11 and lr 3e-4 (the paper); 3x = 36 epochs with
drops after epochs 27 and 33 and lr 1e-4 (the authors' released 3x config). Linear warmup over 500 iterations
(MMDetection's default).
"""

from hieradet.solver import COCO_TRAIN_IMAGES, epoch_schedule, epochs_to_iters

# epochs, lr, epochs after which the lr drops 10x
SCHEDULES = {
    "1x": dict(epochs=12, lr=3e-4, drops=(9, 11)),
    "3x": dict(epochs=36, lr=1e-4, drops=(27, 33)),
}


def apply_recipe(schedule, model, optimizer, train, dataloader, images_per_epoch=COCO_TRAIN_IMAGES):
    """Sets the optimizer, ``train.max_iter`` and returns the ``lr_multiplier`` of ``schedule`` ("1x" or "3x")."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {list(SCHEDULES)}")
    s = SCHEDULES[schedule]
    optimizer.lr = s["lr"]
    optimizer.weight_decay = 0.05
    optimizer.params.lr_decay_rate = 0.9
    fractions = tuple(d / s["epochs"] for d in s["drops"])
    lr_multiplier = epoch_schedule(
        train, dataloader, s["epochs"], images_per_epoch, warmup_iters=500, fractions=fractions
    )  # sets train.max_iter and train.recipe
    train.eval_period = epochs_to_iters(s["epochs"] / 4, images_per_epoch, dataloader.train.total_batch_size)
    return lr_multiplier
