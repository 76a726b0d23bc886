"""Mask R-CNN, HieraDet-B+, COCO, 100 epochs: Bolya et al. 2024, Tab. 16 (box 54.3 / mask 48.2 in Tab. 10)."""

from hieradet.modeling import hieradet_kwargs

from .mask_rcnn_hieradet_b_100ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.update(hieradet_kwargs("B+"))  # 112 wide, 2 heads, 2-3-16-3, global 12, 16, 20
model.backbone.bottom_up.drop_path_rate = 0.3
optimizer.lr = 7e-5
optimizer.params.lr_decay_rate = 0.85
train.paper_target = "box 54.3 / mask 48.2 (Bolya et al. 2024, Tab. 10)"
