"""Bolya et al. 2024, Tab. 3 ablation, ViTDet-L: relpos in all blocks, position embedding abswin.

Paper result (COCO box / mask): 55.8 / 49.3.
"""

from ..mask_rcnn_vitdet_l_100ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.relpos = "all"
model.backbone.net.pos_embed = "abswin"
train.paper_target = "box 55.8 / mask 49.3 (Bolya et al. 2024, Tab. 3)"
