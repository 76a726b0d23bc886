"""Mask R-CNN, fixed ViTDet-B (abs win), LVIS v1, 100 epochs: ViTDet's LVIS recipe (lr 2e-4, repeat-factor
sampling, federated loss), position embedding fixed."""

from ..COCO.mask_rcnn_vitdet_b_100ep import dataloader, model, optimizer, train
from ..common.lvis import lvis_schedule, make_lvis

make_lvis(model, dataloader)
optimizer.lr = 2e-4

lr_multiplier = lvis_schedule(train, dataloader)
train.paper_target = "none (not in Bolya et al. 2024)"
