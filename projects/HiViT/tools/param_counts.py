#!/usr/bin/env python
"""Parameter counts of the HiViT presets (built on the meta device: no memory, no init time).

Three counts per size, in millions:
  backbone      configured as the classification model (224 px, 14x14 absolute embedding, no relative position
                embeddings, no output norms), classifier excluded;
  + cls + rpb   that plus the 1000-way classifier (fc_norm + head) and the official Swin-style relative position
                bias tables ((2*14-1)^2 x heads per main block): comparable with the paper's Tab. 7;
  detection     the detection variant of the project's configs (decomposed relpos on the 4 global blocks sized for
                1344 px, LayerNorm on the 4 outputs).

    python projects/HiViT/tools/param_counts.py
"""

import torch

from hieradet.modeling.hivit import HIVIT_SIZES, HiViT, hivit_kwargs

PAPER_PARAMS_M = {"T": 19.2, "S": 37.5, "B": 66.4, "L": 266.8}  # Zhang et al. 2023, Tab. 7


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main():
    cols = ["size", "widths", "blocks", "heads", "global blocks", "backbone (M)", "+ cls + rpb (M)", "Tab. 7 (M)"]
    print("| " + " | ".join(cols + ["detection (M)"]) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size, cfg in HIVIT_SIZES.items():
        with torch.device("meta"):
            cls_model = HiViT(**hivit_kwargs(size, img_size=224, relpos="none", out_norm=False))
            det = HiViT(**hivit_kwargs(size, img_size=1344))
        c, heads, depths = cfg["embed_dim"], cfg["num_heads"], cfg["depths"]
        extra = (2 * c + c * 1000 + 1000) + (2 * 14 - 1) ** 2 * heads * depths[2]
        n = count(cls_model)
        print(
            f"| HiViT-{size} | {c // 4}-{c // 2}-{c} | {'-'.join(map(str, depths))} | {heads} | "
            f"{','.join(map(str, det.global_blocks))} | {n / 1e6:.2f} | {(n + extra) / 1e6:.2f} | "
            f"{PAPER_PARAMS_M[size]} | {count(det) / 1e6:.2f} |"
        )


if __name__ == "__main__":
    main()
