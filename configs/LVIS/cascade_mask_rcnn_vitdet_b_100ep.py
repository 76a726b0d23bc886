"""Cascade Mask R-CNN version of ``mask_rcnn_vitdet_b_100ep.py`` (LVIS v1)."""

from ..common.models.cascade import make_cascade
from .mask_rcnn_vitdet_b_100ep import dataloader, lr_multiplier, model, optimizer, train

make_cascade(model)
train.paper_target = "none (not in Bolya et al. 2024)"
