"""Mask R-CNN, HieraDet-S, COCO, 100 epochs. Not in the paper: our extrapolation of Tab. 16.

Values chosen (no paper numbers): lr 1.4e-4 as B; drop path 0.15 (between T's 0.1 and B's 0.2);
layer decay 0.8, which with 16 blocks gives the stem about the same lr factor as B's 0.85 over 24
blocks (0.8 ** 17 = 0.023 vs 0.85 ** 25 = 0.017). Global blocks 7, 10, 13 (B's rule).
"""

from hieradet.modeling import hieradet_kwargs

from .mask_rcnn_hieradet_b_100ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.update(hieradet_kwargs("S"))  # 96 wide, 1 head, 1-2-11-2, global 7, 10, 13
model.backbone.bottom_up.drop_path_rate = 0.15
optimizer.lr = 1.4e-4
optimizer.params.lr_decay_rate = 0.8
train.paper_target = "none (not in Bolya et al. 2024)"
