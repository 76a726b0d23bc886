"""Mask R-CNN, HieraDet-H, LVIS v1, 100 epochs: Bolya et al. 2024, App. A.3 (Tab. 16 + repeat-factor sampling,
federated loss, LVIS lr 6e-5)."""

from ..COCO.mask_rcnn_hieradet_h_75ep import dataloader, model, optimizer, train
from ..common.lvis import lvis_schedule, make_lvis

make_lvis(model, dataloader)
optimizer.lr = 6e-5

lr_multiplier = lvis_schedule(train, dataloader)
train.paper_target = "none (Tab. 12 reports Cascade only)"
