"""Mask R-CNN, fixed ViTDet-L (abs win), COCO, 100 epochs (box 55.8 / mask 49.6 in Bolya et al. 2024 Tab. 3
and 10). Optimizer groups: ViTDet's, as ``mask_rcnn_vitdet_b_100ep.py``."""

from hieradet.modeling.vit import vit_kwargs

from .mask_rcnn_vitdet_b_100ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.update(vit_kwargs("L"))  # 1024 wide, 24 blocks, 16 heads, global 5, 11, 17, 23
model.backbone.net.drop_path_rate = 0.4
optimizer.lr = 1e-4
optimizer.params.lr_decay_rate = 0.8
train.paper_target = "box 55.8 / mask 49.6 (Bolya et al. 2024, Tab. 3 and 10)"
