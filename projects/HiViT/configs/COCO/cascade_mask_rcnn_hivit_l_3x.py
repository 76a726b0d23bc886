"""Cascade Mask R-CNN version of ``mask_rcnn_hivit_l_3x.py`` (same backbone, optimizer and schedule)."""

from .....configs.common.models.cascade import make_cascade
from .mask_rcnn_hivit_l_3x import dataloader, lr_multiplier, model, optimizer, train

make_cascade(model)
train.paper_target = "none (not in Zhang et al. 2023)"
