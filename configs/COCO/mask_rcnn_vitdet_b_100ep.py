"""Mask R-CNN, fixed ViTDet-B (abs win), COCO, 100 epochs (box 52.2 / mask 46.2 in paper 001 Tab. 10).

ViTDet's recipe unchanged except the position embedding: the pretrained 14x14 embedding is tiled per
window instead of interpolated, and relpos is kept on the global blocks only. As in ViTDet, norms and
the position embedding get no weight decay while biases do; the relpos tables (new, zero-initialised,
on the 4 global blocks only) get none either, like every position embedding in this project.
"""

from hieradet.solver import COCO_TRAIN_IMAGES, epochs_to_iters, step_lr_multiplier

from ..common.coco_loader_lsj import dataloader
from ..common.models.mask_rcnn_vitdet import model
from ..common.optim import AdamW as optimizer
from ..common.train import train

# ViTDet-B: lr 1e-4, drop path 0.1, layer decay 0.7, global blocks 2, 5, 8, 11, window 14
model.backbone.net.drop_path_rate = 0.1
optimizer.lr = 1e-4
optimizer.params.lr_decay_rate = 0.7
optimizer.params.weight_decay_bias = None  # ViTDet decays biases

# 100 epochs of COCO train2017 (~118k images) at 64 images per batch: 100 * 118000 / 64 = 184375 iterations;
# step decay (x0.1) at 8/9 and 26/27 of them (iterations 163889 and 177546), 250 warmup iterations.
train.max_iter = epochs_to_iters(100, COCO_TRAIN_IMAGES, dataloader.train.total_batch_size)
lr_multiplier = step_lr_multiplier(train.max_iter)
train.eval_period = 5000
