#!/usr/bin/env python
"""Parameters and FLOPs of backbones and whole detectors, per module and in total (library: ``hieradet.benchmark``).

Takes the model names of ``tools/benchmark.py`` (presets such as ``hieradet-b``, ``d2-vitdet-b``,
``sam2-hiera-b``, or a LazyConfig file / ``hieradet.model_zoo`` name with ``--opts`` overrides) and counts, like
detectron2's ``tools/analyze_model.py``, with fvcore on a traced forward pass of one random image. Multiply-adds
are printed as GMACs (GFLOP = 2 x GMACs); elementwise ops are not counted; ``scaled_dot_product_attention`` counts
as its two matrix products (see ``hieradet.benchmark.flops``). Whole detectors (``--part model``) are counted for
one image in eval mode with the full 100 detections, as ``tools/benchmark.py`` times them.

Examples::

    python tools/analyze_model.py hieradet-b d2-vitdet-b --tasks flop parameter --size 1024
    python tools/analyze_model.py configs/COCO/mask_rcnn_hieradet_b_100ep.py --part model --depth 2
"""

import argparse
import json
import os
from typing import Optional, Sequence

import torch

from hieradet.benchmark import build, count_flops, count_params
from hieradet.benchmark.flops import depth_table


def main(argv: Optional[Sequence[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="preset names, LazyConfig .py files or hieradet.model_zoo names")
    ap.add_argument("--tasks", nargs="+", choices=("flop", "parameter"), default=["flop", "parameter"])
    ap.add_argument("--part", choices=("backbone", "model"), default="backbone")
    ap.add_argument("--size", type=int, default=1024, help="square image side (px)")
    ap.add_argument("--depth", type=int, default=1, help="module depth of the per-module tables")
    ap.add_argument("--opts", nargs="*", default=[], help="LazyConfig overrides key=value (config files)")
    ap.add_argument("--weights", help="checkpoint of the (single) config model: its layout is applied, weights loaded")
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.weights and len(args.models) != 1:
        ap.error("--weights goes with exactly one model")
    if args.size < 1:
        ap.error(f"--size must be >= 1, got {args.size}")

    torch.manual_seed(0)
    results = {"size": args.size, "part": args.part, "models": []}
    for spec in args.models:
        m = build(spec, args.part, args.size, args.opts, weights=args.weights)
        entry = {"name": spec}
        print(f"== {spec} ({args.part}, {args.size}x{args.size}) ==")
        if "parameter" in args.tasks:
            params = count_params(m.module)
            entry["params"] = params[""]
            print(f"parameters: {params[''] / 1e6:.3f} M")
            print(depth_table(params, args.depth, 1e6, "M"))
        if "flop" in args.tasks:
            f = count_flops(m)
            entry["gmacs"] = f["total"] / 1e9
            entry["gmacs_by_operator"] = {k: v / 1e9 for k, v in f["by_operator"].items()}
            entry["gmacs_by_module"] = {
                k: v / 1e9 for k, v in f["by_module"].items() if (k.count(".") + 1 if k else 0) <= args.depth
            }
            print(f"multiply-adds: {entry['gmacs']:.2f} GMACs ({2 * entry['gmacs']:.2f} GFLOP) per image")
            print(depth_table(f["by_module"], args.depth, 1e9, "GMACs"))
            ops = ", ".join(f"{k} {v / 1e9:.2f}" for k, v in sorted(f["by_operator"].items(), key=lambda x: -x[1]))
            print(f"by operator (GMACs): {ops}")
            if f["unsupported"]:
                print(f"not counted: {', '.join(sorted(f['unsupported']))}")
        results["models"].append(entry)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return results


if __name__ == "__main__":
    main()
