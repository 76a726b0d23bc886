"""Backbones, their building blocks and their family declarations (:mod:`~hieradet.modeling.family`). Imports
nothing else of the package; the yacs config keys and the detectron2 ``BACKBONE_REGISTRY`` entries are in
:mod:`hieradet.config`."""

from .attention import Attention, rel_pos_bias
from .blocks import Block
from .family import BackboneFamily, families, family_of, get_family, match_size, register_family
from .hieradet import HIERA_SIZES, HieraDet, default_global_blocks, hieradet_kwargs
from .hivit import HIVIT_SIZES, HiViT, hivit_kwargs
from .norms import ChannelLayerNorm, channel_layer_norm
from .pos_embed import AbsWinPosEmbed
from .vit import VIT_SIZES, ViT, vit_kwargs
from .windows import window_partition, window_unpartition

__all__ = [
    "AbsWinPosEmbed",
    "Attention",
    "BackboneFamily",
    "ChannelLayerNorm",
    "channel_layer_norm",
    "Block",
    "families",
    "family_of",
    "get_family",
    "match_size",
    "register_family",
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
