"""System-level Cascade Mask R-CNN, HieraDet-B, COCO: 1280 px, linear soft-NMS, single-scale test.

Paper 001 Tab. 11 (single-scale test, box / mask AP on minival): 57.7 / 49.6.
``cascade_mask_rcnn_hieradet_b_100ep.py`` with LSJ at 1280 px
(train crops and test resize 1280, square padding 1280)
and linear soft-NMS on the stage-averaged cascade scores. Multi-scale + flip test: the ``_tta``
variant.
"""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from hieradet.modeling.soft_nms import use_soft_nms

from ..cascade_mask_rcnn_hieradet_b_100ep import dataloader, lr_multiplier, model, optimizer, train

image_size = 1280
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
]
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size),
]
model.backbone.bottom_up.img_size = image_size  # relpos tables of the global blocks; square_pad follows

# paper 001, App. A: "When we use softnms, we use the linear method."
use_soft_nms(model, method="linear")
