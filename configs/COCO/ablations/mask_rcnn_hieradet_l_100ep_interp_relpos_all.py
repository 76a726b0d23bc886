"""Paper 001 Tab. 5-style ablation, HieraDet-L: relpos in all blocks, position embedding interpolate.

Paper result (COCO box / mask): 55.6 / 49.3 (Tab. 5, the paper's HieraDet-L without abs win; the paper does not
say where its relpos went, we take every block as in its Tab. 17 note).
"""

from ..mask_rcnn_hieradet_l_100ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.relpos = "all"
model.backbone.bottom_up.pos_embed = "interpolate"
model.backbone.bottom_up.pos_embed_window = 56  # an original Hiera checkpoint: its full 56x56 grid
model.backbone.bottom_up.pos_embed_global = None
