"""System-level Cascade Mask R-CNN, HieraDet-B, COCO: 1280 px, linear soft-NMS, multi-scale + flip test.

Paper 001 Tab. 11 (multi-scale test, box / mask AP on minival): 59.3 / 51.2. The model of
``cascade_mask_rcnn_hieradet_b_1280_softnms.py`` wrapped in :class:`hieradet.modeling.tta.GeneralizedRCNNTTA`.

For evaluation only (``--eval-only``, ``train.init_checkpoint`` = weights trained with the single-scale
config; the wrapper loads the bare model's weights). The paper does not list its test scales; ours:
short edges 800-1440 px in steps of 160 (long edge <= 1920), each also flipped (10 passes per image),
merged with the model's linear soft-NMS.
"""

from detectron2.config import LazyCall as L

from hieradet.modeling.tta import GeneralizedRCNNTTA

from .cascade_mask_rcnn_hieradet_b_1280_softnms import dataloader, lr_multiplier, optimizer, train
from .cascade_mask_rcnn_hieradet_b_1280_softnms import model as _single_scale_model

model = L(GeneralizedRCNNTTA)(
    model=_single_scale_model,
    min_sizes=[800, 960, 1120, 1280, 1440],
    max_size=1920,
    flip=True,
    batch_size=1,
)
