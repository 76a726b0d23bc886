"""Bolya et al. 2024, Tab. 5-style ablation, HieraDet-L: relpos in the global blocks only, position embedding abswin.

Paper result (COCO box / mask): 56.2 / 50.0 (Tab. 5, HieraDet-L abs win, same as ../mask_rcnn_hieradet_l_100ep.py).
"""

from ..mask_rcnn_hieradet_l_100ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.relpos = "global"
model.backbone.bottom_up.pos_embed = "abswin"
train.paper_target = "box 56.2 / mask 50.0 (Bolya et al. 2024, Tab. 5)"
