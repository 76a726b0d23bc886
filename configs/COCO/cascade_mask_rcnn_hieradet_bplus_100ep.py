"""Cascade Mask R-CNN version of ``mask_rcnn_hieradet_bplus_100ep.py`` (same backbone, optimizer and schedule)."""

from ..common.models.cascade import make_cascade
from .mask_rcnn_hieradet_bplus_100ep import dataloader, lr_multiplier, model, optimizer, train

make_cascade(model)
train.paper_target = "box 56.8 / mask 49.1 (Bolya et al. 2024, Tab. 10)"
