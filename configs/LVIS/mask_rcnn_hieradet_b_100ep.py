"""Mask R-CNN, HieraDet-B, LVIS v1, 100 epochs: Bolya et al. 2024, App. A.3 (Tab. 16 + repeat-factor sampling,
federated loss, LVIS lr 1.4e-4)."""

from ..COCO.mask_rcnn_hieradet_b_100ep import dataloader, model, optimizer, train
from ..common.lvis import lvis_schedule, make_lvis

make_lvis(model, dataloader)
optimizer.lr = 1.4e-4

lr_multiplier = lvis_schedule(train, dataloader)
train.paper_target = "none (Tab. 12 reports Cascade only)"
