"""Cascade Mask R-CNN, HieraDet-L, LVIS v1, 100 epochs.

Bolya et al. 2024, Tab. 12 (system-level): mask 47.1 / box 52.5.
"""

from ..common.models.cascade import make_cascade
from .mask_rcnn_hieradet_l_100ep import dataloader, lr_multiplier, model, optimizer, train

make_cascade(model)
train.paper_target = "mask 47.1 / box 52.5 (Bolya et al. 2024, Tab. 12, system-level)"
