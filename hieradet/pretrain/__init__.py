"""Sparse MAE pretraining for HieraDet (Ryali et al. 2023) with original or absolute-win position embeddings
(Bolya et al. 2024), the detection-ready backbone file it writes, and a toy reproduction of the
interpolation bug."""

from .checkpoint import (
    POS_EMBED_TYPES,
    backbone_checkpoint,
    encoder_layout,
    load_backbone_file,
    pretrain_encoder_kwargs,
)
from .mae import HieraMAE, check_img_size, check_mask_ratio, grid_to_units, random_unit_mask, unit_sides, units_to_grid

__all__ = [
    "HieraMAE",
    "POS_EMBED_TYPES",
    "backbone_checkpoint",
    "check_img_size",
    "check_mask_ratio",
    "encoder_layout",
    "grid_to_units",
    "load_backbone_file",
    "pretrain_encoder_kwargs",
    "random_unit_mask",
    "unit_sides",
    "units_to_grid",
]
