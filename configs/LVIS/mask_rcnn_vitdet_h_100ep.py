"""Mask R-CNN, fixed ViTDet-H (abs win), LVIS v1, 100 epochs: ViTDet's LVIS recipe (lr 1e-4, drop path 0.4,
layer decay 0.9, every parameter decayed), position embedding fixed."""

from hieradet.modeling.vit import vit_kwargs

from .mask_rcnn_vitdet_b_100ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.update(vit_kwargs("H"))  # 1280 wide, 32 blocks, 16 heads, global 7, 15, 23, 31
model.backbone.net.drop_path_rate = 0.4
optimizer.lr = 1e-4
optimizer.params.lr_decay_rate = 0.9
optimizer.params.weight_decay_norm = None  # ViTDet-H: norms decayed
# Our embedding differs by design: the tiled window_embed takes ViTDet-H's pos_embed rule (decayed at 0.1).
optimizer.params.no_weight_decay_keys = ()
train.paper_target = "none (not in Bolya et al. 2024)"
