"""Dataset look-up for the training loop: clear errors for missing data. Registering a COCO- or LVIS-format json
under a name is :func:`hieradet.data.register_json_dataset` (also importable from here and from
``hieradet.engine``)."""

import os
from typing import Iterable, List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data.register import register_json_dataset

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
