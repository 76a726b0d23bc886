"""Cascade Mask R-CNN, HieraDet-B, LVIS v1, 100 epochs.

Bolya et al. 2024, Tab. 12 (system-level): mask 42.9 / box 47.7.
"""

from ..common.models.cascade import make_cascade
from .mask_rcnn_hieradet_b_100ep import dataloader, lr_multiplier, model, optimizer, train

make_cascade(model)
train.paper_target = "mask 42.9 / box 47.7 (Bolya et al. 2024, Tab. 12, system-level)"
