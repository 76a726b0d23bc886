"""Registers a dataset written by :func:`hieradet.data.generate_synthetic_dataset` in detectron2's catalogs."""

import json
import os
from typing import Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.data.datasets.lvis import load_lvis_json

from .synthetic import annotation_files

__all__ = ["register_synthetic_dataset", "detect_format"]


def detect_format(root: str) -> str:
    """``"coco"`` or ``"lvis"``: which annotation files the dataset under ``root`` has."""
    found = [fmt for fmt in ("coco", "lvis") if all(os.path.isfile(p) for p in annotation_files(root, fmt).values())]
    if not found:
        wanted = [p for fmt in ("coco", "lvis") for p in annotation_files(root, fmt).values()]
        raise FileNotFoundError(
            f"no synthetic dataset under {root!r}: expected the train and val files of one of {wanted}; "
            "create one with `python tools/generate_dataset.py --output DIR` "
            "or hieradet.data.generate_synthetic_dataset"
        )
    if len(found) == 2:
        raise ValueError(f"{root!r} holds both COCO and LVIS annotation files; pass fmt='coco' or fmt='lvis'")
    return found[0]


def _read_categories(json_file: str) -> list:
    try:
        with open(json_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"annotation file {json_file!r} is not valid json: {e}") from e
    cats = data.get("categories") if isinstance(data, dict) else None
    if not cats:
        raise ValueError(f"annotation file {json_file!r} has no 'categories'")
    if not data.get("images"):
        raise ValueError(f"annotation file {json_file!r} has no images")
    cats = sorted(cats, key=lambda c: c["id"])
    if [c["id"] for c in cats] != list(range(1, len(cats) + 1)):
        raise ValueError(f"category ids in {json_file!r} must be 1..N, got {[c['id'] for c in cats]}")
    return cats


def register_synthetic_dataset(root: str, prefix: Optional[str] = None, fmt: Optional[str] = None) -> Tuple[str, str]:
    """Registers the train and val splits under ``root`` as detectron2 datasets ``<prefix>_train`` and
    ``<prefix>_val`` with their metadata (``thing_classes``, ``json_file``, ``image_root``,
    ``evaluator_type``; LVIS also ``class_image_count``), so ``DatasetCatalog.get(name)`` loads them and
    detectron2's COCO/LVIS evaluators find their ground truth.

    Registering the same files under the same names again is a no-op; a name already used for other
    files is an error.

    Args:
        root (str): folder written by ``generate_synthetic_dataset``.
        prefix (str): name prefix (default ``"synthetic_coco"`` / ``"synthetic_lvis"``).
        fmt (str): ``"coco"`` or ``"lvis"``; default: detected from the files present.

    Returns:
        tuple[str, str]: (train name, val name).
    """
    root = os.path.abspath(root)
    fmt = fmt or detect_format(root)
    paths = annotation_files(root, fmt)
    for split, p in paths.items():
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{fmt} {split} annotation file {p!r} is missing")
    prefix = prefix or f"synthetic_{fmt}"
    names = []
    for split, json_file in paths.items():
        name = f"{prefix}_{split}"
        names.append(name)
        if name in DatasetCatalog.list():
            registered = MetadataCatalog.get(name).get("json_file")
            if registered == json_file:
                continue
            raise ValueError(f"dataset name {name!r} is already registered for {registered!r}; choose another prefix")
        cats = _read_categories(json_file)
        meta = {
            "thing_classes": [c["name"] for c in cats],
            "json_file": json_file,
            "image_root": os.path.join(root, split),
            "evaluator_type": fmt,
        }
        if fmt == "coco":
            meta["thing_dataset_id_to_contiguous_id"] = {c["id"]: i for i, c in enumerate(cats)}
            image_root = os.path.join(root, split)
            DatasetCatalog.register(name, lambda j=json_file, r=image_root, n=name: load_coco_json(j, r, n))
        else:
            meta["class_image_count"] = [{"id": c["id"], "image_count": c["image_count"]} for c in cats]
            # detectron2 joins image_root + "<split>/<file>" (split taken from coco_url), so the root ends in "/"
            image_root = root + os.sep
            DatasetCatalog.register(name, lambda j=json_file, r=image_root: load_lvis_json(j, r, None))
        MetadataCatalog.get(name).set(**meta)
    return names[0], names[1]
