"""Sparse MAE pretraining for HieraDet (Ryali et al. 2023) with a full-grid (``"interpolate"``) or an absolute-win
(``"abswin"``) position embedding (Bolya et al. 2024), and the detection-ready backbone file it writes. The toy
reproduction of the interpolation bug is a project of its own, ``projects/ReproduceBug``."""

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
