"""Mask R-CNN, HieraDet-L, COCO, 100 epochs: Bolya et al. 2024, Tab. 16 (box 56.2 / mask 50.0 in Tab. 5 and 10)."""

from hieradet.modeling import hieradet_kwargs

from .mask_rcnn_hieradet_b_100ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.update(hieradet_kwargs("L"))  # 144 wide, 2 heads, 2-6-36-4, global 23, 33, 43
model.backbone.bottom_up.drop_path_rate = 0.45
optimizer.lr = 1.2e-4
optimizer.params.lr_decay_rate = 0.9
train.paper_target = "box 56.2 / mask 50.0 (Bolya et al. 2024, Tab. 5 and 10)"
