"""Moved: box-only training lives in :mod:`hieradet.engine.box_only`; this path keeps working."""

from hieradet.engine.box_only import auto_box_only, dataset_has_masks, set_box_only

__all__ = ["auto_box_only", "dataset_has_masks", "set_box_only"]
