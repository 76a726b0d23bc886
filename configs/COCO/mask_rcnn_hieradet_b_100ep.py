"""Mask R-CNN, HieraDet-B, COCO, 100 epochs: Bolya et al. 2024, Tab. 16 (box 53.7 / mask 47.9 in Tab. 10)."""

from hieradet.solver import COCO_TRAIN_IMAGES, epoch_schedule

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
lr_multiplier = epoch_schedule(train, dataloader, epochs=100, images_per_epoch=COCO_TRAIN_IMAGES)
train.eval_period = 5000
train.paper_target = "box 53.7 / mask 47.9 (Bolya et al. 2024, Tab. 10)"
