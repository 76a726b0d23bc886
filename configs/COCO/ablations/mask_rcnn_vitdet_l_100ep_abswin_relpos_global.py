"""Bolya et al. 2024, Tab. 3 ablation, ViTDet-L: relpos in the global blocks only, position embedding abswin.

Paper result (COCO box / mask): 55.8 / 49.6 (the fixed ViTDet-L, same as ../mask_rcnn_vitdet_l_100ep.py).
"""

from ..mask_rcnn_vitdet_l_100ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.relpos = "global"
model.backbone.net.pos_embed = "abswin"
train.paper_target = "box 55.8 / mask 49.6 (Bolya et al. 2024, Tab. 3)"
