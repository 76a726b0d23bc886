"""Mask R-CNN, fixed ViTDet-H (abs win), COCO, 75 epochs (box 56.9 / mask 50.3 in paper 001 Tab. 10)."""

from hieradet.modeling.vit import vit_kwargs
from hieradet.solver import COCO_TRAIN_IMAGES, epochs_to_iters, step_lr_multiplier

from .mask_rcnn_vitdet_b_100ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.update(vit_kwargs("H"))  # 1280 wide, 32 blocks, 16 heads, global 7, 15, 23, 31
model.backbone.net.drop_path_rate = 0.5
optimizer.lr = 1e-4
optimizer.params.lr_decay_rate = 0.9

# 75 epochs: 75 * 118000 / 64 = 138281 iterations; decay at 122916 and 133159
train.max_iter = epochs_to_iters(75, COCO_TRAIN_IMAGES, dataloader.train.total_batch_size)
lr_multiplier = step_lr_multiplier(train.max_iter)
