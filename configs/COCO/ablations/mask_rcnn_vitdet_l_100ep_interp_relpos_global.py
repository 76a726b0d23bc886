"""Bolya et al. 2024, Tab. 3 ablation, ViTDet-L: relpos in the global blocks only, position embedding interpolate.

Paper result (COCO box / mask): 55.1 / 48.9.
"""

from ..mask_rcnn_vitdet_l_100ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.relpos = "global"
model.backbone.net.pos_embed = "interpolate"
train.paper_target = "box 55.1 / mask 48.9 (Bolya et al. 2024, Tab. 3)"
