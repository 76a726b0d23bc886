#!/usr/bin/env python
"""Prints the parameter counts of every backbone preset (built on the meta device: no memory, no init time).

For Hiera two counts are given: configured as the original Hiera (56x56 position embedding, no relpos; the number
compared with the Hiera paper's Tab. 2 once the classifier is added back) and as the detection backbone
(8x8 + 7x7 abs-win embedding, relpos on the 3 global blocks at 1024 px). For ViT and HiViT, "original" is the
pretraining model's layout (ViT: relpos in every block as detectron2's ViTDet; HiViT: classification model without
relpos or output norms; projects/HiViT/tools/param_counts.py compares it with the HiViT paper) and "detection" the
project's detection configuration.

    python tools/param_counts.py [--markdown]
"""

import argparse

import torch

from hieradet.modeling import HIERA_SIZES, HieraDet, hieradet_kwargs
from hieradet.modeling.hivit import HIVIT_SIZES, HiViT, hivit_kwargs
from hieradet.modeling.vit import VIT_SIZES, ViT, vit_kwargs


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def hiera_rows():
    for size, cfg in HIERA_SIZES.items():
        with torch.device("meta"):
            original = HieraDet(**hieradet_kwargs(size, relpos="none", pos_embed_window=56, pos_embed_global=None))
            det = HieraDet(**hieradet_kwargs(size))
        c = cfg["embed_dim"]
        yield {
            "model": f"HieraDet-{size}",
            "channels": "-".join(str(c * 2**i) for i in range(4)),
            "blocks": "-".join(map(str, cfg["stages"])),
            "heads": "-".join(str(cfg["num_heads"] * 2**i) for i in range(4)),
            "global blocks": ",".join(map(str, det.global_blocks)),
            "original (M)": count(original) / 1e6,
            "detection (M)": count(det) / 1e6,
        }


def vit_rows():
    for size, cfg in VIT_SIZES.items():
        with torch.device("meta"):
            det = ViT(**vit_kwargs(size))
            bugged = ViT(**vit_kwargs(size, relpos="all", pos_embed="interpolate"))
        yield {
            "model": f"ViT-{size}",
            "channels": str(cfg["embed_dim"]),
            "blocks": str(cfg["depth"]),
            "heads": str(cfg["num_heads"]),
            "global blocks": ",".join(map(str, cfg["global_blocks"])),
            "original (M)": count(bugged) / 1e6,
            "detection (M)": count(det) / 1e6,
        }


def hivit_rows():
    for size, cfg in HIVIT_SIZES.items():
        with torch.device("meta"):
            original = HiViT(**hivit_kwargs(size, img_size=224, relpos="none", out_norm=False))
            det = HiViT(**hivit_kwargs(size, img_size=1344))
        c = cfg["embed_dim"]
        yield {
            "model": f"HiViT-{size}",
            "channels": f"{c // 4}-{c // 2}-{c}",
            "blocks": "-".join(map(str, cfg["depths"])),
            "heads": str(cfg["num_heads"]),
            "global blocks": ",".join(map(str, det.global_blocks)),
            "original (M)": count(original) / 1e6,
            "detection (M)": count(det) / 1e6,
        }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()
    rows = list(hiera_rows()) + list(vit_rows()) + list(hivit_rows())
    cols = list(rows[0])
    if args.markdown:
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
    for r in rows:
        vals = [f"{v:.2f}" if isinstance(v, float) else v for v in r.values()]
        print(("| " + " | ".join(vals) + " |") if args.markdown else "  ".join(f"{c}={v}" for c, v in zip(cols, vals)))


if __name__ == "__main__":
    main()
