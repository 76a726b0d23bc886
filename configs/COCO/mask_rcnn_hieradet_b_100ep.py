"""Mask R-CNN, HieraDet-B, COCO, 100 epochs: paper 001 Tab. 16 (box 53.7 / mask 47.9 in Tab. 10)."""

from hieradet.solver import COCO_TRAIN_IMAGES, epochs_to_iters, step_lr_multiplier

from ..common.coco_loader_lsj import dataloader
from ..common.models.mask_rcnn_hieradet import model
from ..common.optim import AdamW as optimizer
from ..common.train import train

# Tab. 16, B: lr 1.4e-4, drop path 0.2, layer decay 0.85 (windows 8, 4, 14, 7; global blocks
# 12, 16, 20 with relpos, from common/models/mask_rcnn_hieradet.py)
model.backbone.bottom_up.drop_path_rate = 0.2
optimizer.lr = 1.4e-4
optimizer.params.lr_decay_rate = 0.85

# 100 epochs of COCO train2017 (~118k images) at 64 images per batch: 100 * 118000 / 64 = 184375 iterations;
# step decay (x0.1) at 8/9 and 26/27 of them (iterations 163889 and 177546), 250 warmup iterations.
train.max_iter = epochs_to_iters(100, COCO_TRAIN_IMAGES, dataloader.train.total_batch_size)
lr_multiplier = step_lr_multiplier(train.max_iter)
train.eval_period = 5000
