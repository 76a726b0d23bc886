"""Bolya et al. 2024, Tab. 3 ablation, ViTDet-L: relpos in all blocks, position embedding interpolate.

Paper result (COCO box / mask): 55.6 / 49.2 (the original ViTDet-L).
"""

from ..mask_rcnn_vitdet_l_100ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.relpos = "all"
model.backbone.net.pos_embed = "interpolate"
train.paper_target = "box 55.6 / mask 49.2 (Bolya et al. 2024, Tab. 3)"
