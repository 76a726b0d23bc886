"""System-level Cascade Mask R-CNN, HieraDet-L, COCO: 1280 px, linear soft-NMS, single-scale test.

Bolya et al. 2024, Tab. 11 (single-scale test, box / mask AP on minival): 60.1 / 51.6.
``cascade_mask_rcnn_hieradet_l_100ep.py`` with the settings of
``configs/common/system.py``. Multi-scale + flip test: the ``_tta`` variant.
"""

from ...common.system import to_system_level
from ..cascade_mask_rcnn_hieradet_l_100ep import dataloader, lr_multiplier, model, optimizer, train

to_system_level(dataloader, model, image_size=1280)
train.paper_target = "box 60.1 / mask 51.6 (Bolya et al. 2024, Tab. 11, single-scale test)"
