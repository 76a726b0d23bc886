"""Cascade Mask R-CNN version of ``mask_rcnn_hieradet_b_100ep.py`` (same backbone, optimizer and schedule)."""

from ..common.models.cascade import make_cascade
from .mask_rcnn_hieradet_b_100ep import dataloader, lr_multiplier, model, optimizer, train

make_cascade(model)
train.paper_target = "box 55.8 / mask 48.4 (Bolya et al. 2024, Tab. 10)"
