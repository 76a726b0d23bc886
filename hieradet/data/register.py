"""Registers COCO- or LVIS-format instance json files in detectron2's catalogs: any json under a name
(:func:`register_json_dataset`, also ``tools/lazyconfig_train_net.py --dataset``), and the train / val splits of a
dataset written by :func:`hieradet.data.generate_synthetic_dataset` (:func:`register_synthetic_dataset`).

One rule for a name registered twice: the same json file and image folder again is a no-op; other files under a
registered name are an error that names both (pick another name, or ``DatasetCatalog.remove`` it first).
"""

import json
import os
from typing import Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from .synthetic import annotation_files

__all__ = ["register_json_dataset", "register_synthetic_dataset", "detect_format"]


def detect_format(root: str) -> str:
    """``"coco"`` or ``"lvis"``: which annotation files the synthetic dataset under ``root`` has."""
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


def _read_json(name: str, json_file: str) -> dict:
    try:
        with open(json_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"dataset {name!r}: annotation file {json_file!r} is not valid json ({e})") from e
    if not isinstance(data, dict) or not data.get("categories"):
        raise ValueError(f"dataset {name!r}: annotation file {json_file!r} has no 'categories'")
    if not data.get("images"):
        raise ValueError(f"dataset {name!r}: annotation file {json_file!r} has no images")
    return data


def _lvis_metadata(name: str, json_file: str, cats: list) -> dict:
    missing = [c["id"] for c in cats if "image_count" not in c]
    if missing:
        raise ValueError(
            f"dataset {name!r}: categories {missing[:5]} of {json_file} lack 'image_count', which LVIS federated "
            "loss needs (LVIS v1 json files have it)"
        )
    if [c["id"] for c in cats] != list(range(1, len(cats) + 1)):
        raise ValueError(
            f"dataset {name!r}: LVIS category ids in {json_file} must be 1..{len(cats)} "
            "(detectron2 maps id k to class k-1)"
        )
    return dict(class_image_count=[{"id": c["id"], "image_count": c["image_count"]} for c in cats])


def _already_registered(name: str, json_file: str, image_root: str) -> bool:
    """True if ``name`` is registered for these files; raises if it is registered for others."""
    if name not in DatasetCatalog.list():
        return False
    meta = MetadataCatalog.get(name)
    registered = (meta.get("json_file"), meta.get("image_root"))
    same = registered[0] is not None and os.path.abspath(registered[0]) == json_file
    if same and registered[1] is not None and os.path.abspath(registered[1]) == os.path.abspath(image_root):
        return True
    raise ValueError(
        f"dataset name {name!r} is already registered for {registered[0]!r} (images {registered[1]!r}), not for "
        f"{json_file!r} (images {image_root!r}); choose another name, or DatasetCatalog.remove({name!r}) and "
        f"MetadataCatalog.remove({name!r}) first"
    )


def register_json_dataset(name: str, json_file: str, image_root: str, fmt: Optional[str] = None) -> str:
    """Registers a COCO- or LVIS-format instance json under ``name`` and returns the format used.

    The metadata (``thing_classes``, ``json_file``, ``image_root``, ``evaluator_type``; COCO also
    ``thing_dataset_id_to_contiguous_id``, LVIS ``class_image_count``) is set at once, so evaluators and
    visualisers find it before the dataset is first loaded. See the module doc for a name registered twice.

    Args:
        name (str): dataset name for ``dataloader.*.dataset.names``.
        json_file (str): annotation file.
        image_root (str): COCO: the folder the json's ``file_name`` entries are relative to; LVIS: the
            folder holding the split folders named in the images' ``coco_url`` (e.g. ``datasets/coco``).
        fmt (str or None): ``"coco"`` or ``"lvis"``; ``None`` detects it (LVIS categories carry
            ``frequency`` / ``image_count``).
    """
    from detectron2.data.datasets import load_coco_json
    from detectron2.data.datasets.lvis import load_lvis_json

    if fmt not in (None, "coco", "lvis"):
        raise ValueError(f"dataset format must be 'coco' or 'lvis', got {fmt!r}")
    json_file = os.path.abspath(json_file)
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"dataset {name!r}: annotation file {json_file!r} does not exist")
    data = _read_json(name, json_file)
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"dataset {name!r}: image folder {image_root!r} does not exist")
    cats = sorted(data["categories"], key=lambda c: c["id"])
    if fmt is None:
        fmt = "lvis" if "frequency" in cats[0] or "image_count" in cats[0] else "coco"
    if _already_registered(name, json_file, image_root):
        return fmt
    meta = dict(thing_classes=[c["name"] for c in cats], json_file=json_file, evaluator_type=fmt)
    if fmt == "coco":
        image_root = os.path.abspath(image_root)
        meta["thing_dataset_id_to_contiguous_id"] = {c["id"]: i for i, c in enumerate(cats)}  # as load_coco_json
        DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    else:
        meta.update(_lvis_metadata(name, json_file, cats))
        # LVIS images are found as image_root + "<split folder>/<file>" from their coco_url: the root ends in "/"
        image_root = os.path.join(os.path.abspath(image_root), "")
        # no dataset name: detectron2 would look for builtin LVIS metadata under it
        DatasetCatalog.register(name, lambda: load_lvis_json(json_file, image_root, None))
    MetadataCatalog.get(name).set(image_root=image_root, **meta)
    return fmt


def register_synthetic_dataset(root: str, prefix: Optional[str] = None, fmt: Optional[str] = None) -> Tuple[str, str]:
    """Registers the train and val splits under ``root`` as ``<prefix>_train`` and ``<prefix>_val`` through
    :func:`register_json_dataset` (the same metadata and the same rule for a name registered twice).

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
        names.append(f"{prefix}_{split}")
        image_root = os.path.join(root, split) if fmt == "coco" else root
        register_json_dataset(names[-1], json_file, image_root, fmt=fmt)
    return names[0], names[1]
