#!/usr/bin/env python
"""Run a LazyConfig detector on images and write pictures of its detections.

Our counterpart of detectron2's ``demo/demo.py``, which only reads yacs configs: this one takes any LazyConfig that
defines ``model`` (e.g. ``configs/COCO/mask_rcnn_hieradet_b_100ep.py``), optional weights, and image files or
folders; it resizes each image like the config's test loader (``dataloader.test.mapper.augmentations``,
otherwise the short edge to 800), draws boxes, masks, labels and scores with detectron2's
``Visualizer`` and writes one PNG per image. It runs on the CPU unless ``--device cuda`` is given.
The weights may be a training checkpoint, a converted file or a raw public one: the model is built with the
layout they record (:func:`hieradet.checkpoint.apply_checkpoint_layout`) and loaded by
:class:`hieradet.checkpoint.HieraDetCheckpointer` (:class:`hieradet.engine.predictor.LazyPredictor`).

Example::

    python tools/predict.py --config-file configs/COCO/mask_rcnn_hieradet_b_100ep.py \\
        --checkpoint model_final.pth --input photos/ street.jpg --output output/vis \\
        --confidence-threshold 0.5
"""

import argparse
import glob
import json
import logging
import os
import time
from typing import List, Optional, Sequence

import numpy as np
import torch

from hieradet.engine.predictor import LazyPredictor

__all__ = ["IMAGE_EXTENSIONS", "PredictError", "LazyPredictor", "collect_images", "read_image", "main"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
logger = logging.getLogger("hieradet.predict")


class PredictError(RuntimeError):
    """A bad input of the tool (config, checkpoint, image) with a message that names it."""


def collect_images(inputs: Sequence[str]) -> List[str]:
    """Expands files, folders (their image files, sorted, not recursive) and glob patterns."""
    paths: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, f)
                for f in os.listdir(item)
                if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(item, f))
            )
            if not found:
                raise PredictError(f"folder {item} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths.extend(found)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            matches = sorted(glob.glob(os.path.expanduser(item)))
            if not matches:
                raise PredictError(f"input {item} not found (not a file, a folder or a matching glob pattern)")
            paths.extend(m for m in matches if os.path.isfile(m))
    if not paths:
        raise PredictError("no input images")
    return paths


def read_image(path: str, fmt: str = "BGR") -> np.ndarray:
    """Reads an image (EXIF orientation applied) as HWC uint8 in ``fmt``; a :class:`PredictError` names
    files that are empty, not images, or truncated."""
    from detectron2.data.detection_utils import read_image as d2_read_image

    if os.path.getsize(path) == 0:
        raise PredictError(f"cannot read image {path}: the file is empty")
    try:
        image = d2_read_image(path, format=fmt)
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError (truncated), ValueError, ...
        raise PredictError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise PredictError(f"cannot read image {path}: decoded to an array of shape {image.shape}")
    return image


def _metadata(cfg, name: Optional[str]):
    from detectron2.data import MetadataCatalog

    if name is None:
        try:
            names = cfg.dataloader.test.dataset.names
        except (AttributeError, KeyError):
            names = None
        name = names if isinstance(names, str) or names is None else (list(names) or [None])[0]
    if name is None:
        return MetadataCatalog.get("__hieradet_predict_unknown")
    if name.endswith(".json") and os.path.isfile(name):  # a COCO annotation file: its categories, in id order
        try:
            with open(name) as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"--metadata {name}: not valid json ({e})") from e
        categories = (data.get("categories") if isinstance(data, dict) else None) or []
        if not categories:
            raise ValueError(f"--metadata {name}: the file has no COCO 'categories'")
        meta = MetadataCatalog.get(f"__hieradet_predict_{os.path.abspath(name)}")
        if not meta.get("thing_classes"):
            meta.set(thing_classes=[c["name"] for c in sorted(categories, key=lambda c: c["id"])])
        return meta
    meta = MetadataCatalog.get(name)
    if not meta.get("thing_classes"):
        logger.warning("dataset %s has no class names registered; labels are class indexes", name)
    return meta


def _output_path(out_dir: str, path: str, used: set) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    name, k = f"{stem}.png", 1
    while name in used:
        name, k = f"{stem}_{k}.png", k + 1
    used.add(name)
    return os.path.join(out_dir, name)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--config-file", required=True, help="LazyConfig (.py or .yaml) defining `model`, or a hieradet.model_zoo name"
    )
    p.add_argument("--checkpoint", help="model weights (default: the config's train.init_checkpoint, if any)")
    p.add_argument("--input", nargs="+", required=True, help="image files, folders or glob patterns")
    p.add_argument("--output", required=True, help="folder for the PNGs (created)")
    p.add_argument("--confidence-threshold", type=float, default=0.5, help="draw detections above this score")
    p.add_argument(
        "--metadata",
        help="class names: a registered dataset name, or a COCO json file (its categories in id order); "
        "default: the config's dataloader.test.dataset.names",
    )
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init (matters without weights)")
    p.add_argument("--tta", action="store_true", help="multi-scale + flip test-time augmentation")
    p.add_argument("--tta-sizes", type=int, nargs="+", help="TTA short-edge sizes (default: 0.75x-1.25x test size)")
    p.add_argument("--tta-max-size", type=int, help="TTA long-edge cap (default: 1.5x the largest TTA size)")
    p.add_argument("--skip-unreadable", action="store_true", help="warn about unreadable images instead of failing")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: key=value ...")
    return p


def _test_size(pred: "LazyPredictor") -> int:
    for aug in pred.aug.augs:
        short = getattr(aug, "short_edge_length", None)
        if short:
            return int(max(short))
    return 800


def run(args) -> List[dict]:
    from detectron2.config import LazyConfig
    from detectron2.utils.visualizer import ColorMode, Visualizer

    from hieradet.model_zoo import resolve_config_path

    try:
        config_file = resolve_config_path(args.config_file)
    except FileNotFoundError:
        raise PredictError(f"config file not found: {args.config_file} (neither a file nor a model_zoo name)") from None
    if not 0.0 <= args.confidence_threshold <= 1.0:
        raise PredictError(f"--confidence-threshold must be in [0, 1], got {args.confidence_threshold}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise PredictError("--device cuda given but no CUDA device is available; use --device cpu")
    images = collect_images(args.input)
    try:
        cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), list(args.opts or []))
    except Exception as e:
        raise PredictError(f"cannot load config {args.config_file}: {type(e).__name__}: {e}") from e
    if "model" not in cfg:
        raise PredictError(f"the config {args.config_file} defines no `model`")
    torch.manual_seed(args.seed)
    try:
        predictor = LazyPredictor(cfg, args.checkpoint, args.device)
    except FileNotFoundError as e:
        raise PredictError(str(e)) from e
    except Exception as e:  # CheckpointError and detectron2's loading errors
        raise PredictError(f"cannot load checkpoint {args.checkpoint or ''}: {type(e).__name__}: {e}") from e
    if args.tta and not predictor.tta:
        from hieradet.modeling.tta import GeneralizedRCNNTTA

        size = _test_size(predictor)
        sizes = args.tta_sizes or [int(size * s) // 32 * 32 for s in (0.75, 1.0, 1.25)]
        max_size = args.tta_max_size or int(max(sizes) * 1.5)
        predictor.model = GeneralizedRCNNTTA(predictor.model, min_sizes=sizes, max_size=max_size).eval()
        predictor.tta = True
    metadata = _metadata(cfg, args.metadata)
    os.makedirs(args.output, exist_ok=True)
    results, used = [], set()
    for path in images:
        try:
            image = read_image(path, "BGR")
        except PredictError as e:
            if not args.skip_unreadable:
                raise
            logger.warning("skipping: %s", e)
            continue
        start = time.perf_counter()
        out = predictor(image)
        seconds = time.perf_counter() - start
        instances = out["instances"].to("cpu")
        instances = instances[instances.scores >= args.confidence_threshold]
        vis = Visualizer(image[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
        drawn = vis.draw_instance_predictions(instances).get_image()
        out_path = _output_path(args.output, path, used)
        from PIL import Image

        Image.fromarray(drawn).save(out_path)
        print(f"{path}: {len(instances)} detections >= {args.confidence_threshold} in {seconds:.2f} s -> {out_path}")
        results.append({"input": path, "output": out_path, "instances": instances, "seconds": seconds})
    return results


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except PredictError as e:
        raise SystemExit(f"predict: {e}") from e


if __name__ == "__main__":
    main()
