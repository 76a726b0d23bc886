"""System-level Cascade Mask R-CNN, HieraDet-B+, COCO: 1280 px, linear soft-NMS, multi-scale + flip test.

Bolya et al. 2024, Tab. 11 (multi-scale test, box / mask AP on minival): 60.0 / 52.0. The model of
``cascade_mask_rcnn_hieradet_bplus_1280_softnms.py`` wrapped for test-time augmentation (``configs/common/system.py``);
evaluation only (``--eval-only`` with weights trained by the single-scale config).
"""

from ...common.system import with_tta
from .cascade_mask_rcnn_hieradet_bplus_1280_softnms import dataloader, lr_multiplier, model, optimizer, train

model = with_tta(model)
train.paper_target = "box 60.0 / mask 52.0 (Bolya et al. 2024, Tab. 11, multi-scale test)"
