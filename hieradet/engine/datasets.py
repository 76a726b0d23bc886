"""Dataset look-up for the training loop: clear errors for missing data, and registration of
COCO- or LVIS-format json files under a name."""

import json
import os
from typing import Iterable, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["check_datasets", "config_dataset_names", "register_json_dataset"]

_BUILTIN = ("coco_2017_train", "coco_2017_val", "lvis_v1_train", "lvis_v1_val")
_HOW_TO_GET = {
    "coco": "download train2017/val2017 images and annotations_trainval2017 from https://cocodataset.org/#download",
    "lvis": "download lvis_v1_train.json / lvis_v1_val.json from https://www.lvisdataset.org/dataset "
    "(LVIS v1 uses the COCO 2017 images, expected under coco/train2017 and coco/val2017)",
}


def _names(value) -> List[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def config_dataset_names(cfg, splits: Sequence[str] = ("train", "test")) -> List[str]:
    """Dataset names the LazyConfig's loaders ``splits`` read (``dataloader.<split>.dataset.names``)."""
    names: List[str] = []
    for split in splits:
        loader = cfg.dataloader.get(split) if "dataloader" in cfg else None
        dataset = loader.get("dataset") if loader is not None else None
        if dataset is not None and "names" in dataset:
            names += [n for n in _names(dataset.names) if n not in names]
    return names


def _datasets_root() -> str:
    return os.path.abspath(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))


def check_datasets(names: Iterable[str]) -> None:
    """Raises a clear error if a dataset is not registered or its files are missing.

    detectron2 registers the builtin datasets (``coco_2017_train``, ``lvis_v1_val``, ...) under
    ``$DETECTRON2_DATASETS`` (default ``./datasets``) and only reads them when first used; this
    checks the json file and image folder up front, so a run fails at start with the expected paths
    instead of deep inside the data loader.
    """
    for name in names:
        if name not in DatasetCatalog.list():
            coco_like = [n for n in _BUILTIN if n in DatasetCatalog.list()]
            raise KeyError(
                f"dataset {name!r} is not registered. Builtin names include {coco_like}; register your own "
                "COCO/LVIS json with `tools/lazyconfig_train_net.py --dataset NAME JSON IMAGE_ROOT` or "
                "detectron2.data.datasets.register_coco_instances()"
            )
        meta = MetadataCatalog.get(name)
        json_file = meta.get("json_file")
        image_root = meta.get("image_root")
        kind = "lvis" if "lvis" in name else "coco"
        hint = (
            f"detectron2 looks for builtin datasets under DETECTRON2_DATASETS={_datasets_root()!r} "
            f"(set the environment variable to the folder holding coco/ and lvis/); {_HOW_TO_GET[kind]}. "
            "See https://github.com/facebookresearch/detectron2/blob/main/datasets/README.md for the layout."
        )
        if json_file and not os.path.isfile(json_file):
            raise FileNotFoundError(
                f"dataset {name!r}: annotation file {os.path.abspath(json_file)!r} does not exist. {hint}"
            )
        if image_root and not os.path.isdir(image_root):
            raise FileNotFoundError(
                f"dataset {name!r}: image folder {os.path.abspath(image_root)!r} does not exist. {hint}"
            )


def _lvis_metadata(json_file: str) -> dict:
    with open(json_file) as f:
        cats = sorted(json.load(f)["categories"], key=lambda c: c["id"])
    if not cats:
        raise ValueError(f"{json_file}: LVIS json has no categories")
    missing = [c["id"] for c in cats if "image_count" not in c]
    if missing:
        raise ValueError(
            f"{json_file}: categories {missing[:5]} lack 'image_count', which LVIS federated loss needs "
            "(LVIS v1 json files have it)"
        )
    ids = [c["id"] for c in cats]
    if ids != list(range(1, len(cats) + 1)):
        raise ValueError(f"{json_file}: LVIS category ids must be 1..{len(cats)} (detectron2 maps id k to class k-1)")
    return dict(
        thing_classes=[c["name"] for c in cats],
        class_image_count=[{"id": c["id"], "image_count": c["image_count"]} for c in cats],
    )


def register_json_dataset(name: str, json_file: str, image_root: str, fmt: Optional[str] = None) -> str:
    """Registers a COCO- or LVIS-format instance json under ``name`` and returns the format used.

    Args:
        name (str): dataset name for ``dataloader.*.dataset.names``.
        json_file (str): annotation file.
        image_root (str): COCO: the folder the json's ``file_name`` entries are relative to; LVIS: the
            folder holding the split folders named in the images' ``coco_url`` (e.g. ``datasets/coco``).
        fmt (str or None): ``"coco"`` or ``"lvis"``; ``None`` detects it (LVIS categories carry
            ``frequency`` / ``image_count``, and LVIS images ``coco_url`` instead of ``file_name``).
    """
    from detectron2.data.datasets import register_coco_instances
    from detectron2.data.datasets.lvis import load_lvis_json

    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"dataset {name!r}: annotation file {json_file!r} does not exist")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"dataset {name!r}: image folder {image_root!r} does not exist")
    if fmt is None:
        try:
            with open(json_file) as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"dataset {name!r}: {json_file} is not valid json ({e})") from e
        cats = data.get("categories") or []
        fmt = "lvis" if cats and ("frequency" in cats[0] or "image_count" in cats[0]) else "coco"
    if fmt not in ("coco", "lvis"):
        raise ValueError(f"dataset format must be 'coco' or 'lvis', got {fmt!r}")
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    if fmt == "coco":
        register_coco_instances(name, {}, json_file, image_root)
    else:
        meta = _lvis_metadata(json_file)
        # LVIS images are found as image_root + "<split folder>/<file>" from their coco_url
        image_root = os.path.join(image_root, "")
        # no dataset name: detectron2 would look for builtin LVIS metadata under it
        DatasetCatalog.register(name, lambda: load_lvis_json(json_file, image_root, None))
        MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="lvis", **meta)
    return fmt
