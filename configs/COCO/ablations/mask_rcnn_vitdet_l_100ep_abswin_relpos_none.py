"""Bolya et al. 2024, Tab. 3 ablation, ViTDet-L: relpos in none blocks, position embedding abswin.

Paper result (COCO box / mask): 55.0 / 49.1.
"""

from ..mask_rcnn_vitdet_l_100ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.relpos = "none"
model.backbone.net.pos_embed = "abswin"
train.paper_target = "box 55.0 / mask 49.1 (Bolya et al. 2024, Tab. 3)"
