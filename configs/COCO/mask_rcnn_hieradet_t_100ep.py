"""Mask R-CNN, HieraDet-T, COCO, 100 epochs. Not in the paper: our extrapolation of Tab. 16.

Values chosen (no paper numbers): lr 1.4e-4 as B; drop path 0.1 (B uses 0.2 with twice the blocks);
layer decay 0.75, which with 12 blocks gives the stem about the same lr factor as B's 0.85 over 24
blocks (0.75 ** 13 = 0.024 vs 0.85 ** 25 = 0.017). Global blocks 5, 7, 9 (B's rule).
"""

from hieradet.modeling import hieradet_kwargs

from .mask_rcnn_hieradet_b_100ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.update(hieradet_kwargs("T"))  # 96 wide, 1 head, 1-2-7-2, global 5, 7, 9
model.backbone.bottom_up.drop_path_rate = 0.1
optimizer.lr = 1.4e-4
optimizer.params.lr_decay_rate = 0.75
train.paper_target = "none (not in Bolya et al. 2024)"
