"""Mask R-CNN, HiViT-S (abs-win), COCO, 3x: ``mask_rcnn_hivit_b_3x.py`` with the S backbone of Tab. 7."""

from hieradet.modeling.hivit import hivit_kwargs

from .mask_rcnn_hivit_b_3x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.update(hivit_kwargs("S"))  # drop path 0.2, global blocks from the size's depth
train.paper_target = "none (not in Zhang et al. 2023)"
