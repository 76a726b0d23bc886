"""Bolya et al. 2024, Tab. 5-style ablation, HieraDet-L: relpos in none blocks, position embedding abswin.

Paper result (COCO box / mask): not reported.
"""

from ..mask_rcnn_hieradet_l_100ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.relpos = "none"
model.backbone.bottom_up.pos_embed = "abswin"
train.paper_target = "none (not reported in Bolya et al. 2024)"
