#!/usr/bin/env python
"""Convert a pretrained checkpoint into weights for hieradet's detection backbones.

Sources (detected from the keys): MAE ViT (``mae_pretrain_vit_*.pth``), official Hiera
(``hiera-transformer``, classification or MAE), timm Hiera incl. the abs-win models, timm/SAM 2
"hieradet" trunks, SAM 2 / SAM 2.1 checkpoints (their ``image_encoder.trunk``), official HiViT (MAE or
classification). The output holds full model keys (``backbone.bottom_up.*`` for HieraDet / HiViT + FPN,
``backbone.net.*`` for ViT + SimpleFeaturePyramid)
and a ``__hieradet__`` metadata entry with the backbone layout the weights need, so that
``train.init_checkpoint=<output>`` builds the right model (:func:`hieradet.checkpoint.apply_checkpoint_layout`) and
loads it exactly. The training tools also take the raw file; converting once saves the conversion at every start.

Examples::

    python tools/convert_checkpoint.py mae_pretrain_vit_base.pth output/mae_vit_b.pth
    python tools/convert_checkpoint.py hiera_base_224.pth output/hiera_b.pth --expect-size B
    python tools/convert_checkpoint.py sam2.1_hiera_base_plus.pt output/sam2_bplus.pth
    python tools/convert_checkpoint.py mae_pretrain_hivit_base.pth output/hivit_b.pth --expect-size B
    python tools/convert_checkpoint.py X.pth Y.pth --pos-embed interpolate   # the bugged baseline
"""

import argparse
import os
import sys

from hieradet.checkpoint import (
    METADATA_KEY,
    SOURCE_FORMATS,
    CheckpointError,
    build_converted_checkpoint,
    config_overrides,
    convert_state_dict,
    default_prefix,
    load_checkpoint_file,
    summarize,
)
from hieradet.checkpoint.atomic import atomic_torch_save
from hieradet.modeling.pos_embed import POS_EMBED_MODES  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="pretrained checkpoint (.pth / .pt / .pyth / .safetensors)")
    p.add_argument("output", help="where to write the converted checkpoint (.pth)")
    p.add_argument("--source-format", default="auto", choices=["auto", *SOURCE_FORMATS], help="default: detect")
    p.add_argument(
        "--prefix",
        default="auto",
        help="key prefix of the backbone in the detection model: 'auto' (backbone.bottom_up. for HieraDet / HiViT, "
        "backbone.net. for ViT), 'none' for backbone-relative keys, or any prefix",
    )
    p.add_argument(
        "--pos-embed",
        default=None,
        choices=POS_EMBED_MODES,
        help="embedding mode for the converted model (default: the source's own: abswin, or abswin_single for "
        "SAM 2); 'interpolate' is the bugged interpolation baseline",
    )
    p.add_argument("--pretrain-img-size", type=int, default=None, help="override the pretraining image size")
    p.add_argument("--expect-size", default=None, help="fail unless the checkpoint is this size (e.g. B, L, B+, T)")
    p.add_argument("--num-heads", type=int, default=None, help="heads of a custom-size model (not in the weights)")
    p.add_argument("--non-strict", action="store_true", help="drop unknown source keys instead of failing")
    p.add_argument("--allow-pickle", action="store_true", help="unpickle non-tensor objects (trusted files only)")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        obj = load_checkpoint_file(args.source, allow_pickle=args.allow_pickle)
        result = convert_state_dict(
            obj,
            source=args.source_format,
            pos_embed=args.pos_embed,
            pretrain_img_size=args.pretrain_img_size,
            expect_size=args.expect_size,
            num_heads=args.num_heads,
            strict=not args.non_strict,
        )
    except (CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.prefix == "auto":
        prefix = default_prefix(result.arch)
    elif args.prefix == "none":
        prefix = ""
    else:
        prefix = args.prefix if args.prefix.endswith(".") else args.prefix + "."
    out = build_converted_checkpoint(result, prefix, source_file=os.path.basename(args.source))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    atomic_torch_save(out, args.output)  # temp file, fsync, rename: never a truncated file under the final name

    print(f"converted {args.source} -> {args.output}")
    for line in summarize(result, prefix):
        print("  " + line)
    module = "model." + prefix.rstrip(".") if prefix else "<backbone>"
    print(f"train with: train.init_checkpoint={args.output}")
    print(
        "layout recorded in the file (tools/lazyconfig_train_net.py, --eval-only and tools/predict.py set it on the "
        "config; in your own code call hieradet.checkpoint.apply_checkpoint_layout(cfg, path) before building):"
    )
    for line in config_overrides(out[METADATA_KEY]["layout"], module):
        print("  " + line)
    if result.size and result.arch in ("HieraDet", "ViT", "HiViT"):  # the project's own configs
        configs = {"HieraDet": "configs/COCO/mask_rcnn_hieradet", "ViT": "configs/COCO/mask_rcnn_vitdet"}
        configs["HiViT"] = "projects/HiViT/configs/COCO/mask_rcnn_hivit"
        tag = result.size.lower().replace("+", "plus")
        print(f"  (use a {result.arch}-{result.size} config, e.g. {configs[result.arch]}_{tag}_*.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
