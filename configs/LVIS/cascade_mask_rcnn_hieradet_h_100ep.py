"""Cascade Mask R-CNN, HieraDet-H, LVIS v1, 100 epochs.

Bolya et al. 2024, Tab. 12 (system-level): mask 48.9 / box 54.6.
"""

from ..common.models.cascade import make_cascade
from .mask_rcnn_hieradet_h_100ep import dataloader, lr_multiplier, model, optimizer, train

make_cascade(model)
train.paper_target = "mask 48.9 / box 54.6 (Bolya et al. 2024, Tab. 12, system-level)"
