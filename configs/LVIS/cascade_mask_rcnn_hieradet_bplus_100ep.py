"""Cascade Mask R-CNN, HieraDet-B+, LVIS v1, 100 epochs.

Bolya et al. 2024, Tab. 12 (system-level): mask 43.9 / box 48.9.
"""

from ..common.models.cascade import make_cascade
from .mask_rcnn_hieradet_bplus_100ep import dataloader, lr_multiplier, model, optimizer, train

make_cascade(model)
train.paper_target = "mask 43.9 / box 48.9 (Bolya et al. 2024, Tab. 12, system-level)"
