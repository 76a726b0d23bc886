"""Paper 001 Tab. 5-style ablation, HieraDet-L: relpos in none blocks, position embedding interpolate.

Paper result (COCO box / mask): not reported.
"""

from ..mask_rcnn_hieradet_l_100ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.relpos = "none"
model.backbone.bottom_up.pos_embed = "interpolate"
model.backbone.bottom_up.pos_embed_window = 56  # an original Hiera checkpoint: its full 56x56 grid
model.backbone.bottom_up.pos_embed_global = None
