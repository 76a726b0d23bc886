"""Mask R-CNN, HieraDet-B, LVIS v1, 100 epochs: paper 001 App. A.3 (Tab. 16 + repeat-factor sampling,
federated loss, LVIS lr 1.4e-4)."""

from hieradet.solver import LVIS_TRAIN_IMAGES, epochs_to_iters, step_lr_multiplier

from ..COCO.mask_rcnn_hieradet_b_100ep import dataloader, lr_multiplier, model, optimizer, train
from ..common.lvis import make_lvis

make_lvis(model, dataloader)
optimizer.lr = 1.4e-4

# 100 epochs of LVIS v1 train (~100k images) at 64 images per batch: 100 * 100000 / 64 = 156250 iterations;
# step decay at 8/9 and 26/27 of them (iterations 138889 and 150463)
train.max_iter = epochs_to_iters(100, LVIS_TRAIN_IMAGES, dataloader.train.total_batch_size)
lr_multiplier = step_lr_multiplier(train.max_iter)
train.eval_period = 30000
