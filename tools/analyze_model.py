#!/usr/bin/env python
"""Parameters and FLOPs of backbones and whole detectors, per module and in total.

Takes the same model names as ``tools/benchmark.py`` (presets such as ``hieradet-b``, ``vitdet-b``,
``d2-vitdet-b``, ``sam2-hiera-b``, or a LazyConfig ``.py`` with ``--opts`` overrides) and counts, like
detectron2's ``tools/analyze_model.py``, with fvcore on a traced forward pass of one random image:

* ``--tasks parameter``: parameters per module (to ``--depth``) and in total;
* ``--tasks flop``: multiply-adds per module and in total. fvcore calls them "flops" (one per
  multiply-add); we print GMACs and state GFLOP = 2 x GMACs where a rate is computed. Elementwise ops
  (adds, softmax, activations) are not counted, as in detectron2. ``scaled_dot_product_attention``,
  which fvcore does not know, is counted as its two matrix products (``L_q x L_k x (d_qk + d_v)`` per
  head), so SDPA models and models with explicit attention matmuls (detectron2's ViT) count the same.

Whole detectors (``--part model``) depend on the input (proposals, detections): counted for one image
in eval mode with the full 100 detections, as ``tools/benchmark.py`` times them.

Examples::

    python tools/analyze_model.py hieradet-b d2-vitdet-b --tasks flop parameter --size 1024
    python tools/analyze_model.py configs/COCO/mask_rcnn_hieradet_b_100ep.py --part model --depth 2
"""

import argparse
import json
import os
import sys
from collections import Counter
from typing import Dict, Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmark import Benchmarked, build  # noqa: E402

__all__ = ["count_flops", "count_params", "sdpa_flop_jit", "main"]

# elementwise / bookkeeping ops that are not counted (detectron2's list plus ops our models use)
_IGNORED_OPS = (
    "aten::add",
    "aten::add_",
    "aten::argmax",
    "aten::argsort",
    "aten::batch_norm",
    "aten::constant_pad_nd",
    "aten::div",
    "aten::div_",
    "aten::exp",
    "aten::gelu",
    "aten::gelu_",
    "aten::log2",
    "aten::max_pool2d",
    "aten::maximum",
    "aten::meshgrid",
    "aten::mul",
    "aten::mul_",
    "aten::neg",
    "aten::nonzero_numpy",
    "aten::reciprocal",
    "aten::repeat_interleave",
    "aten::rsub",
    "aten::sigmoid",
    "aten::sigmoid_",
    "aten::softmax",
    "aten::sort",
    "aten::sqrt",
    "aten::sub",
    "aten::pad",
    "aten::tile",
    "aten::unflatten",
    "aten::upsample_bicubic2d",
    "torchvision::nms",
)


def _shape(value) -> Sequence[int]:
    return value.type().sizes()


def sdpa_flop_jit(inputs, outputs) -> int:
    """Multiply-adds of ``aten::scaled_dot_product_attention``: ``q @ k^T`` plus ``attn @ v``."""
    q, k, v = (_shape(x) for x in inputs[:3])
    batch = 1
    for d in q[:-2]:
        batch *= d
    lq, dqk = q[-2], q[-1]
    lk, dv = k[-2], v[-1]
    return batch * lq * lk * (dqk + dv)


def _analysis(model: Benchmarked):
    from fvcore.nn import FlopCountAnalysis

    inputs = model.inputs(1, torch.device("cpu"))
    module = model.module.cpu().eval()
    if model.kind == "model":
        from detectron2.utils.analysis import FlopCountAnalysis as D2FlopCountAnalysis

        analysis = D2FlopCountAnalysis(module, inputs)
    else:
        analysis = FlopCountAnalysis(module, (inputs,))
    analysis.set_op_handle(**{k: None for k in _IGNORED_OPS})
    analysis.set_op_handle(**{"aten::scaled_dot_product_attention": sdpa_flop_jit})
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return analysis


def count_flops(model: Benchmarked, batch: int = 1) -> Dict[str, object]:
    """Multiply-adds for ``batch`` images: ``total``, ``by_module`` and ``by_operator`` (and the ops skipped)."""
    analysis = _analysis(model)
    with torch.no_grad():
        total = analysis.total()
        by_module = dict(analysis.by_module())
        by_op = dict(analysis.by_operator())
        skipped = dict(Counter(analysis.unsupported_ops()))
    return {
        "total": total * batch,
        "by_module": {k: v * batch for k, v in by_module.items()},
        "by_operator": {k: v * batch for k, v in by_op.items()},
        "unsupported": skipped,
    }


def count_params(module: torch.nn.Module) -> Dict[str, int]:
    """Parameters per module prefix (``""`` is the total), as fvcore's ``parameter_count``."""
    from fvcore.nn import parameter_count

    return dict(parameter_count(module))


def _depth_table(values: Dict[str, float], depth: int, scale: float, unit: str) -> str:
    rows = [(k or "(total)", v) for k, v in values.items() if (k.count(".") + 1 if k else 0) <= depth]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:{width}s} {v / scale:12.3f} {unit}" for k, v in rows)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="preset names or LazyConfig .py files")
    ap.add_argument("--tasks", nargs="+", choices=("flop", "parameter"), default=["flop", "parameter"])
    ap.add_argument("--part", choices=("backbone", "model"), default="backbone")
    ap.add_argument("--size", type=int, default=1024, help="square image side (px)")
    ap.add_argument("--depth", type=int, default=1, help="module depth of the per-module tables")
    ap.add_argument("--opts", nargs="*", default=[], help="LazyConfig overrides key=value (config files)")
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.size < 1:
        ap.error(f"--size must be >= 1, got {args.size}")

    torch.manual_seed(0)
    results = {"size": args.size, "part": args.part, "models": []}
    for spec in args.models:
        m = build(spec, args.part, args.size, args.opts)
        entry = {"name": spec}
        print(f"== {spec} ({args.part}, {args.size}x{args.size}) ==")
        if "parameter" in args.tasks:
            params = count_params(m.module)
            entry["params"] = params[""]
            print(f"parameters: {params[''] / 1e6:.3f} M")
            print(_depth_table(params, args.depth, 1e6, "M"))
        if "flop" in args.tasks:
            f = count_flops(m)
            entry["gmacs"] = f["total"] / 1e9
            entry["gmacs_by_operator"] = {k: v / 1e9 for k, v in f["by_operator"].items()}
            entry["gmacs_by_module"] = {
                k: v / 1e9 for k, v in f["by_module"].items() if (k.count(".") + 1 if k else 0) <= args.depth
            }
            print(f"multiply-adds: {entry['gmacs']:.2f} GMACs ({2 * entry['gmacs']:.2f} GFLOP) per image")
            print(_depth_table(f["by_module"], args.depth, 1e9, "GMACs"))
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
