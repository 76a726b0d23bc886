"""Mask R-CNN, HiViT-B (abs-win), COCO, 1x (12 epochs): the HiViT paper's recipe (App. A; Tab. 5 reports
51.3 box / 44.6 mask AP for the authors' interpolated-embedding backbone with MAE pretraining)."""

from .....configs.common.optim import AdamW as optimizer
from .....configs.common.train import train
from ..common.coco_multiscale import dataloader
from ..common.mask_rcnn_hivit import model
from ..common.recipe import apply_recipe

model.backbone.bottom_up.drop_path_rate = 0.2  # the authors' detection config (B)
# AdamW lr 3e-4, weight decay 0.05, layer decay 0.9, batch 16; 88500 iterations, x0.1 after epochs 9 and 11
lr_multiplier = apply_recipe("1x", model, optimizer, train, dataloader)
train.paper_target = "none for abs-win; box 51.3 / mask 44.6 for the interpolated backbone (Zhang et al. 2023, Tab. 5)"
