"""Train Mask R-CNN-style LazyConfigs on datasets that have boxes but no masks.

detectron2's (and ViTDet's) LazyConfigs assume instance masks: the mask head needs ``gt_masks`` and the
LSJ mapper recomputes boxes from masks (``recompute_boxes=True`` asserts ``use_instance_mask``), so a
box-only dataset fails (detectron2 issue 4416). :func:`set_box_only` turns a config into a box-only
detector; :func:`auto_box_only` does it when the training datasets have no ``segmentation`` at all.
"""

import logging
from typing import Iterable, Optional, Sequence, Union

__all__ = ["dataset_has_masks", "set_box_only", "auto_box_only"]

logger = logging.getLogger(__name__)


def dataset_has_masks(names: Union[str, Sequence[str]]) -> Optional[bool]:
    """Whether the registered detectron2 datasets ``names`` carry instance masks.

    Returns ``True`` if every annotation has a ``segmentation``, ``False`` if none has, ``None`` if the
    datasets have no annotations at all. Raises ``ValueError`` (naming a dataset and an image) if only
    some annotations have masks: the mask loss would silently train on part of the objects.
    """
    from detectron2.data import DatasetCatalog

    if isinstance(names, str):
        names = [names]
    with_mask, without = None, None
    for name in names:
        for record in DatasetCatalog.get(name):
            for ann in record.get("annotations", []):
                if ann.get("segmentation"):
                    with_mask = with_mask or (name, record.get("file_name"))
                else:
                    without = without or (name, record.get("file_name"))
    if with_mask and without:
        raise ValueError(
            f"dataset {without[0]!r} mixes annotations with and without 'segmentation' (e.g. {without[1]!r} has an "
            f"object without a mask, {with_mask[1]!r} one with a mask); add masks everywhere or drop them all and "
            "train box-only (hieradet.engine.box_only.set_box_only)"
        )
    if with_mask is None and without is None:
        return None
    return with_mask is not None


def _roi_heads(model_cfg) -> Iterable:
    heads = model_cfg.get("roi_heads") if hasattr(model_cfg, "get") else None
    return [heads] if heads is not None else []


def set_box_only(cfg) -> None:
    """Makes a LazyConfig (Mask R-CNN / Cascade Mask R-CNN, any data loader) box-only, in place.

    Removes the mask branch (``roi_heads.mask_in_features/mask_pooler/mask_head = None``), stops the
    train mapper from reading masks and from recomputing boxes from them, and evaluates boxes only.
    """
    found = False
    for heads in _roi_heads(cfg.model):
        for key in ("mask_in_features", "mask_pooler", "mask_head"):
            if key in heads:
                heads[key] = None
                found = True
    if not found:
        logger.info("set_box_only: model.roi_heads has no mask branch; nothing to remove")
    loader = cfg.get("dataloader")
    if loader is not None:
        train = loader.get("train")
        mapper = train.get("mapper") if train is not None else None
        if mapper is not None:
            mapper.use_instance_mask = False
            if "recompute_boxes" in mapper:
                mapper.recompute_boxes = False
        evaluator = loader.get("evaluator")
        if evaluator is not None and not isinstance(evaluator, (list, tuple)) and "_target_" in evaluator:
            evaluator.tasks = ("bbox",)


def auto_box_only(cfg, names: Optional[Sequence[str]] = None) -> bool:
    """Applies :func:`set_box_only` if the training datasets (default: ``dataloader.train.dataset.names``)
    have no masks. Returns whether it did."""
    if names is None:
        names = cfg.dataloader.train.dataset.names
    has = dataset_has_masks(names)
    if has is False:
        logger.warning(
            "the training datasets %s have no instance masks: training a box-only model (removed the mask head, the "
            "train mapper no longer reads masks nor recomputes boxes from them, the evaluator scores boxes only)",
            names,
        )
        set_box_only(cfg)
        return True
    return False
