#!/usr/bin/env python
"""Converts an official HiViT checkpoint (MAE pretraining or ImageNet classification, github
zhangxiaosong18/hivit) into a file the project's HiViT configs load with ``train.init_checkpoint``.

    python projects/HiViT/tools/convert_hivit_checkpoint.py mae_pretrain_hivit_base.pth hivit_b_converted.pth

The output holds ``{"model": {"backbone.bottom_up.<key>": tensor}, "__hieradet__": metadata}``. The stem goes
to ``patch_embed`` (MLP blocks and merges), the main stage to ``blocks``, the 14x14 ``absolute_pos_embed`` to the
tiled window embedding ``pos_embed.window_embed``; the classifier, the MAE decoder and the Swin-style relative
position bias tables are dropped (see ``hieradet/checkpoint/hivit.py``). Before writing, the weights are loaded
into a HiViT of the checkpoint's architecture, so a file that is written is a file that loads.
"""

import argparse
import sys

import torch

from hieradet.checkpoint.hivit import HIVIT_PREFIX, build_hivit_checkpoint, load_official_hivit, official_hivit_layout
from hieradet.checkpoint.io import CheckpointError, load_checkpoint_file, unwrap_state_dict
from hieradet.modeling.hivit import HIVIT_SIZES, HiViT


def _match_size(embed_dim, depths):
    for name, cfg in HIVIT_SIZES.items():
        if cfg["embed_dim"] == embed_dim and tuple(cfg["depths"]) == tuple(depths):
            return name
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="official HiViT checkpoint (.pth)")
    parser.add_argument("output", help="converted checkpoint to write")
    parser.add_argument("--prefix", default=HIVIT_PREFIX, help=f"key prefix of the backbone (default {HIVIT_PREFIX})")
    parser.add_argument("--size", choices=list(HIVIT_SIZES), help="fail unless the checkpoint is this HiViT size")
    parser.add_argument("--num-heads", type=int, help="main-stage heads of a custom-size checkpoint")
    args = parser.parse_args(argv)

    try:
        sd = unwrap_state_dict(load_checkpoint_file(args.input), args.input)[0]
        layout = official_hivit_layout(sd)
        size = _match_size(layout["embed_dim"], layout["depths"])
        if args.size and size != args.size:
            raise CheckpointError(
                f"{args.input} is HiViT-{size or 'custom'} (main width {layout['embed_dim']}, depths "
                f"{layout['depths']}), not HiViT-{args.size} (width {HIVIT_SIZES[args.size]['embed_dim']}, depths "
                f"{HIVIT_SIZES[args.size]['depths']})"
            )
        heads = args.num_heads or layout["main_heads"] or (HIVIT_SIZES[size]["num_heads"] if size else None)
        if heads is None:
            raise CheckpointError("custom-size checkpoint without relative position tables: pass --num-heads")
        grid = layout["pretrain_grid"] or 14
        with torch.device("meta"):  # architecture check only: no memory, no init
            model = HiViT(
                embed_dim=layout["embed_dim"],
                depths=layout["depths"],
                num_heads=heads,
                global_blocks=(),
                pretrain_img_size=16 * grid,
                img_size=16 * grid,
            )
        load_official_hivit(model, sd, dry_run=True)
        out = build_hivit_checkpoint(sd, prefix=args.prefix, num_heads=heads)
    except (CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out["__hieradet__"]["source_file"] = args.input
    out["__hieradet__"]["size"] = size
    torch.save(out, args.output)
    n = sum(v.numel() for v in out["model"].values())
    print(f"HiViT-{size or 'custom'}: main width {layout['embed_dim']}, depths {layout['depths']}, {heads} heads")
    print(f"wrote {len(out['model'])} tensors ({n / 1e6:.2f}M parameters) under {args.prefix!r} to {args.output}")
    print(f"dropped {len(sd) - len(out['model'])} source keys (classifier, MAE decoder, relative position bias)")
    print(f"use it with: train.init_checkpoint={args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
