"""Mask R-CNN, fixed ViTDet-L (abs win), LVIS v1, 100 epochs: ViTDet's LVIS recipe (lr 2e-4, drop path 0.4,
layer decay 0.8), position embedding fixed."""

from hieradet.modeling.vit import vit_kwargs

from .mask_rcnn_vitdet_b_100ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.update(vit_kwargs("L"))  # 1024 wide, 24 blocks, 16 heads, global 5, 11, 17, 23
model.backbone.net.drop_path_rate = 0.4
optimizer.lr = 2e-4
optimizer.params.lr_decay_rate = 0.8
train.paper_target = "none (not in Bolya et al. 2024)"
