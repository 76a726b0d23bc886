"""Moved: the tiny test models and configs live in :mod:`hieradet.testing`; this path keeps working."""

from hieradet.testing import BACKBONES, make_tiny, tiny_backbone_kwargs, tiny_mask_rcnn, tiny_train_config

__all__ = ["BACKBONES", "make_tiny", "tiny_backbone_kwargs", "tiny_mask_rcnn", "tiny_train_config"]
