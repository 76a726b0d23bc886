"""Bolya et al. 2024's system-level settings (Tab. 11): 1280 px LSJ training and testing, linear soft-NMS
("When we use softnms, we use the linear method", App. A), and multi-scale + flip test-time augmentation.

The paper does not list its test scales; ours: short edges 800-1440 px in steps of 160 (long edge <= 1920),
each also flipped (10 passes per image), merged with the model's linear soft-NMS.
"""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from hieradet.modeling.soft_nms import use_soft_nms
from hieradet.modeling.tta import GeneralizedRCNNTTA

TTA_MIN_SIZES = [800, 960, 1120, 1280, 1440]
TTA_MAX_SIZE = 1920


def to_system_level(dataloader, model, image_size: int = 1280) -> None:
    """Turns a Cascade config's ``dataloader`` and ``model`` into the 1280 px + linear soft-NMS setting, in place."""
    dataloader.train.mapper.augmentations = [
        L(T.RandomFlip)(horizontal=True),
        L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size),
        L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
    ]
    dataloader.test.mapper.augmentations = [
        L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size),
    ]
    model.backbone.bottom_up.img_size = image_size  # relpos tables of the global blocks; square_pad follows
    use_soft_nms(model, method="linear")


def with_tta(model):
    """The model wrapped for multi-scale + flip testing (evaluation only: ``--eval-only`` with the weights
    trained by the single-scale config; the wrapper loads the bare model's weights)."""
    return L(GeneralizedRCNNTTA)(model=model, min_sizes=TTA_MIN_SIZES, max_size=TTA_MAX_SIZE, flip=True, batch_size=1)
