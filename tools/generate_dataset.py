#!/usr/bin/env python
"""Writes a small synthetic instance-segmentation dataset (images + COCO or LVIS v1 json) to a folder.

    python tools/generate_dataset.py --output datasets/synthetic_coco --num-train 400 --num-val 50 --image-size 256
    python tools/generate_dataset.py --output datasets/synthetic_lvis --format lvis

The same arguments always give identical files. See ``hieradet.data.generate_synthetic_dataset``.
"""

import argparse
import json
import sys
import time
from collections import Counter


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--format", choices=["coco", "lvis"], default="coco")
    parser.add_argument("--num-train", type=int, default=16)
    parser.add_argument("--num-val", type=int, default=8)
    parser.add_argument("--image-size", type=int, nargs="+", default=[128], help="SIZE or H W")
    parser.add_argument("--num-categories", type=int, default=None, help="default: 4 (coco), 10 (lvis)")
    parser.add_argument("--max-objects", type=int, default=6)
    parser.add_argument("--mask-format", choices=["polygon", "rle"], default="polygon")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if len(args.image_size) not in (1, 2):
        parser.error("--image-size takes SIZE or H W")

    from hieradet.data import generate_synthetic_dataset

    size = args.image_size[0] if len(args.image_size) == 1 else tuple(args.image_size)
    start = time.perf_counter()
    try:
        paths = generate_synthetic_dataset(
            args.output,
            num_train=args.num_train,
            num_val=args.num_val,
            image_size=size,
            seed=args.seed,
            fmt=args.format,
            num_categories=args.num_categories,
            max_objects=args.max_objects,
            mask_format=args.mask_format,
        )
    except ValueError as e:
        parser.error(str(e))
    for split in ("train", "val"):
        with open(paths[split]) as f:
            data = json.load(f)
        per_cat = Counter(a["category_id"] for a in data["annotations"])
        names = {c["id"]: c["name"] for c in data["categories"]}
        summary = ", ".join(f"{names[i]} {per_cat.get(i, 0)}" for i in sorted(names))
        n_img, n_ann = len(data["images"]), len(data["annotations"])
        print(f"{split}: {n_img} images, {n_ann} instances ({summary}) -> {paths[split]}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
