"""Mask R-CNN, HiViT-B (abs-win), LVIS v1, 3x (36 epochs of LVIS train): the COCO 3x recipe with the project's
LVIS settings (repeat-factor sampling, federated sigmoid loss, 300 detections per image; configs/common/lvis.py)."""

from hieradet.solver import LVIS_TRAIN_IMAGES

from .....configs.common.lvis import make_lvis
from ..COCO.mask_rcnn_hivit_b_3x import dataloader, model, optimizer, train
from ..common.recipe import apply_recipe

make_lvis(model, dataloader)
lr_multiplier = apply_recipe("3x", model, optimizer, train, dataloader, images_per_epoch=LVIS_TRAIN_IMAGES)
train.paper_target = "none (not in Zhang et al. 2023)"
