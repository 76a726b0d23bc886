"""System-level Cascade Mask R-CNN, HieraDet-B, COCO: 1280 px, linear soft-NMS, single-scale test.

Bolya et al. 2024, Tab. 11 (single-scale test, box / mask AP on minival): 57.7 / 49.6.
``cascade_mask_rcnn_hieradet_b_100ep.py`` with the settings of
``configs/common/system.py``. Multi-scale + flip test: the ``_tta`` variant.
"""

from ...common.system import to_system_level
from ..cascade_mask_rcnn_hieradet_b_100ep import dataloader, lr_multiplier, model, optimizer, train

to_system_level(dataloader, model, image_size=1280)
train.paper_target = "box 57.7 / mask 49.6 (Bolya et al. 2024, Tab. 11, single-scale test)"
