#!/usr/bin/env python
"""Pictures and window-similarity numbers of a backbone's absolute position embedding (library: ``hieradet.analysis``).

For a HieraDet / ViT LazyConfig (random init, or with ``--checkpoint`` weights) or for a checkpoint alone, writes

* ``pos_embed_channels.png``: a few channels of the window embedding, the global embedding, the embedding at the
  pretraining size (224 px) and the full embedding at ``--img-size`` made by the recursive abs-win method, by
  one-level abs-win and by bicubic interpolation (the bug), side by side, with the detection-window grid drawn on
  the full embeddings (Bolya et al. 2024, Fig. 1, 3 and 6);
* ``window_similarity.png`` and ``window_similarity.json``: the mean pairwise cosine similarity between the
  embedding's windows (Fig. 4) against image size, per method, for the detection window (the 224 px tile: 56 tokens
  at stride 4, 14 at stride 16) and for the window embedding's own size; the table is also printed.

Examples::

    python tools/visualize_pos_embed.py --config-file configs/common/models/mask_rcnn_hieradet.py \\
        --img-size 1024 --output output/pos_embed
    python tools/visualize_pos_embed.py --checkpoint hieradet_b.pth --output output/pos_embed_ckpt
"""

import argparse
import json
import os
from typing import Dict, Optional, Sequence

import torch

from hieradet.analysis.plots import plot_channels, plot_similarity
from hieradet.analysis.pos_embed import (
    embed_from_checkpoint,
    embed_from_config,
    format_table,
    pick_channels,
    similarity_table,
)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", help="LazyConfig of a model with a HieraDet or ViT backbone")
    p.add_argument("--checkpoint", help="weights (with --config-file: loaded into it; alone: shapes are inferred)")
    p.add_argument("--prefix", help="checkpoint key prefix of the embedding, e.g. backbone.bottom_up.pos_embed.")
    p.add_argument("--patch-stride", type=int, help="token stride when it cannot be inferred (Hiera 4, ViT 16)")
    p.add_argument("--pretrain-img-size", type=int, default=224, help="pretraining image size (default 224)")
    p.add_argument("--img-size", type=int, default=1024, help="image size of the full embeddings (default 1024)")
    p.add_argument(
        "--sizes", type=int, nargs="+", help="image sizes of the similarity curve (default: 224 to --img-size)"
    )
    p.add_argument("--channels", type=int, nargs="+", help="channels to plot (default: the 3 most varied)")
    p.add_argument("--allow-pickle", action="store_true", help="allow checkpoints with pickled objects")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init of a config's model (default 0)")
    p.add_argument("--output", default="output/pos_embed", help="output directory")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: key=value ...")
    return p


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    args = get_parser().parse_args(argv)
    if not args.config_file and not args.checkpoint:
        raise SystemExit("visualize_pos_embed: give --config-file, --checkpoint, or both")
    if args.img_size <= 0 or args.pretrain_img_size <= 0:
        raise SystemExit("visualize_pos_embed: --img-size and --pretrain-img-size must be positive")
    torch.manual_seed(args.seed)
    try:
        if args.config_file:
            src = embed_from_config(args.config_file, args.opts, args.checkpoint, args.allow_pickle)
        else:
            src = embed_from_checkpoint(
                args.checkpoint, args.prefix, args.patch_stride, args.pretrain_img_size, args.allow_pickle
            )
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"visualize_pos_embed: {e}") from e
    sizes = args.sizes or [s for s in (224, 320, 448, 512, 640, 768, 896, 1024, 1280) if s < args.img_size] + [
        args.img_size
    ]
    channels = args.channels if args.channels else pick_channels(src, 3)
    os.makedirs(args.output, exist_ok=True)
    rows = similarity_table(src, sizes)
    files = {
        "channels": os.path.join(args.output, "pos_embed_channels.png"),
        "similarity": os.path.join(args.output, "window_similarity.png"),
        "json": os.path.join(args.output, "window_similarity.json"),
    }
    try:
        plot_channels(src, args.img_size, channels, files["channels"])
    except ValueError as e:
        raise SystemExit(f"visualize_pos_embed: {e}") from e
    plot_similarity(rows, src, files["similarity"])
    with open(files["json"], "w") as f:
        json.dump({"source": src.name, "stride": src.stride, "tile": src.tile, "rows": rows}, f, indent=1)
    print(f"{src.name}: stride {src.stride}, pretrain grid {src.tile}x{src.tile}, window embed {src.window}")
    print("window similarity (mean pairwise cosine similarity of full windows; '-': fewer than 2 windows)")
    print(format_table(rows))
    for f in files.values():
        print(f"wrote {f}")
    return {"source": src, "rows": rows, "files": files}


if __name__ == "__main__":
    main()
