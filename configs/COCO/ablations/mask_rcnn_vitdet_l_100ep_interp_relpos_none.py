"""Bolya et al. 2024, Tab. 3 ablation, ViTDet-L: relpos in none blocks, position embedding interpolate.

Paper result (COCO box / mask): 54.6 / 48.5.
"""

from ..mask_rcnn_vitdet_l_100ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.relpos = "none"
model.backbone.net.pos_embed = "interpolate"
train.paper_target = "box 54.6 / mask 48.5 (Bolya et al. 2024, Tab. 3)"
