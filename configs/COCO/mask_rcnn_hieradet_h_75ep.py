"""Mask R-CNN, HieraDet-H, COCO, 75 epochs: Bolya et al. 2024, Tab. 16 (box 57.0 / mask 50.3 in Tab. 10)."""

from hieradet.modeling import hieradet_kwargs
from hieradet.solver import COCO_TRAIN_IMAGES, epoch_schedule

from .mask_rcnn_hieradet_b_100ep import dataloader, model, optimizer, train

model.backbone.bottom_up.update(hieradet_kwargs("H"))  # 256 wide, 4 heads, 2-6-36-4, global 23, 33, 43
model.backbone.bottom_up.drop_path_rate = 0.55
optimizer.lr = 6e-5
optimizer.params.lr_decay_rate = 0.925

# 75 epochs: 75 * 118000 / 64 = 138281 iterations; decay at 122916 and 133159
lr_multiplier = epoch_schedule(train, dataloader, epochs=75, images_per_epoch=COCO_TRAIN_IMAGES)
train.paper_target = "box 57.0 / mask 50.3 (Bolya et al. 2024, Tab. 10)"
