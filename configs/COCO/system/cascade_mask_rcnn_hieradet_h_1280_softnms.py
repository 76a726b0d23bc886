"""System-level Cascade Mask R-CNN, HieraDet-H, COCO: 1280 px, linear soft-NMS, single-scale test.

Bolya et al. 2024, Tab. 11 (single-scale test, box / mask AP on minival): 60.7 / 52.0.
``cascade_mask_rcnn_hieradet_h_75ep.py`` with the settings of
``configs/common/system.py``. Multi-scale + flip test: the ``_tta`` variant.
"""

from ...common.system import to_system_level
from ..cascade_mask_rcnn_hieradet_h_75ep import dataloader, lr_multiplier, model, optimizer, train

to_system_level(dataloader, model, image_size=1280)

# Bolya et al. 2024, App. A: drop path 0.6 for H at 1280 px (0.55 at 1024)
model.backbone.bottom_up.drop_path_rate = 0.6
train.paper_target = "box 60.7 / mask 52.0 (Bolya et al. 2024, Tab. 11, single-scale test)"
