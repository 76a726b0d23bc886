"""Backbones, their building blocks and the detectron2 registry entries."""

from . import hivit, registry  # noqa: F401  (BACKBONE_REGISTRY entries)
from .attention import Attention, Block, rel_pos_bias, window_partition, window_unpartition
from .hieradet import HIERA_SIZES, HieraDet, default_global_blocks, hieradet_kwargs
from .hivit import HIVIT_SIZES, HiViT, hivit_kwargs
from .pos_embed import AbsWinPosEmbed
from .vit import VIT_SIZES, ViT, vit_kwargs

__all__ = [
    "AbsWinPosEmbed",
    "Attention",
    "Block",
    "HieraDet",
    "HIERA_SIZES",
    "default_global_blocks",
    "hieradet_kwargs",
    "rel_pos_bias",
    "window_partition",
    "window_unpartition",
    "ViT",
    "VIT_SIZES",
    "vit_kwargs",
    "HiViT",
    "HIVIT_SIZES",
    "hivit_kwargs",
]
