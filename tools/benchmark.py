#!/usr/bin/env python
"""Inference / training speed of backbones and whole detectors, side by side (library: ``hieradet.benchmark``).

Models are presets (``hieradet-{t,s,b,b+,l,h}``, ``vitdet-{b,l,h}``, ``hivit-{t,s,b,l}``, detectron2's
``d2-vitdet-{b,l,h}`` and ``d2-vitdet-b-norelpos``, SAM 2's ``sam2-hiera-{t,s,b,b+,l}``; see
``hieradet.benchmark.presets``) or LazyConfig
files / ``hieradet.model_zoo`` names (``--opts key=value`` overrides). ``--part backbone`` (default) times the
bottom-up network, ``--part model`` the whole Mask R-CNN (score threshold 0: the full detections go through the
mask head). Warm-up iterations, then ``--iters`` timed ones, the models alternating iteration by iteration; the
first ``--discard`` fraction is dropped and the median and interquartile spread reported per image; ``--compare``
prints ratios. ``--isolate``: every model in fresh processes of its own, ``--rounds`` times. ``--train``: forward
+ backward + AdamW step inside a detectron2 ``EventStorage``, iterations/s and peak memory (CUDA: allocated; CPU:
resident-set growth). ``--flops``: achieved GFLOP/s (fvcore); ``--matmul-peak``: this machine's matmul rate.
``--runtimes eager compiled torch_export onnxruntime``: each model also under
``torch.compile`` and as an exported ``.pt2`` / ONNX file (a detector exported whole), alternately on the same
images (:mod:`hieradet.benchmark.runtimes`).

``benchmark.py eval [...]`` times COCO / LVIS scoring, reference vs faster-coco-eval
(:mod:`hieradet.benchmark.scoring`).
``benchmark.py report A.json [B.json ...]`` prints saved results as a markdown table, ``benchmark.py plot A.json
--out speed.png`` plots ms/image against parameters.

Examples::

    python tools/benchmark.py hieradet-b --compare sam2-hiera-b d2-vitdet-b --size 1024 --iters 8
    python tools/benchmark.py COCO/mask_rcnn_hieradet_b_100ep.py --part model --compare d2-vitdet-b
    python tools/benchmark.py hieradet-b --compare d2-vitdet-b --part model --train --size 1024
    python tools/benchmark.py COCO/mask_rcnn_hieradet_t_100ep.py --part model --runtimes eager torch_export onnxruntime
"""

import argparse
import sys
from typing import Optional, Sequence

import torch

from hieradet.benchmark import RUNTIMES, markdown_table, plot_results, run_benchmark


def report_main(argv: Sequence[str]):
    ap = argparse.ArgumentParser(prog="benchmark.py report|plot")
    ap.add_argument("command", choices=("report", "plot"))
    ap.add_argument("results", nargs="+", help="JSON files written by --json")
    ap.add_argument("--out", default="speed_vs_size.png", help="plot: output PNG")
    ap.add_argument("--title", help="plot: title (default: from the settings of the first file)")
    args = ap.parse_args(argv)
    if args.command == "report":
        text = markdown_table(args.results)
        print(text)
        return text
    path = plot_results(args.results, args.out, args.title)
    print(f"wrote {path}")
    return path


def get_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="preset name, LazyConfig .py file or hieradet.model_zoo name")
    ap.add_argument("--compare", nargs="+", default=[], help="other models, run alternately in this process")
    ap.add_argument("--part", choices=("backbone", "model"), default="backbone")
    ap.add_argument("--size", type=int, default=1024, help="square image side (px)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help="fp16/bf16: autocast")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iters", type=int, default=10, help="timed iterations per model")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--discard", type=float, default=0.25, help="fraction of timed iterations dropped first")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--timer", choices=("wall", "cpu"), default="wall", help="cpu: process CPU time")
    ap.add_argument("--train", action="store_true", help="time training iterations instead")
    ap.add_argument("--flops", action="store_true", help="also report achieved GFLOP/s (fvcore count)")
    ap.add_argument("--matmul-peak", action="store_true", help="also measure this machine's matmul GFLOP/s")
    ap.add_argument("--no-full-detections", action="store_true", help="keep the config's score threshold")
    ap.add_argument("--opts", nargs="*", default=[], help="LazyConfig overrides key=value (config files)")
    ap.add_argument("--weights", help="checkpoint of the first model (a config): its layout is applied, weights loaded")
    ap.add_argument("--isolate", action="store_true", help="each model in a fresh process of its own")
    ap.add_argument("--rounds", type=int, default=2, help="--isolate: processes per model, in turn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--profile", type=int, default=0, metavar="N", help="after timing: each model's top N ops by self time"
    )
    ap.add_argument(
        "--runtimes",
        nargs="+",
        default=["eager"],
        choices=RUNTIMES,
        help="run each model in these runtimes, alternately, on the same images (a detector: exported whole)",
    )
    ap.add_argument("--compile-backend", default="inductor", help="the torch.compile backend of --runtimes compiled")
    ap.add_argument("--json", help="write the results to this JSON file")
    return ap


def main(argv: Optional[Sequence[str]] = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("report", "plot"):
        return report_main(argv)
    if argv and argv[0] == "eval":
        from hieradet.benchmark.scoring import main as eval_main

        return eval_main(argv[1:])
    ap = get_parser()
    args = ap.parse_args(argv)
    for name, v in (("--size", args.size), ("--batch", args.batch), ("--iters", args.iters), ("--rounds", args.rounds)):
        if v < 1:
            ap.error(f"{name} must be >= 1, got {v}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda requested but no CUDA device is available")
    if args.profile < 0:
        ap.error(f"--profile must be >= 0, got {args.profile}")
    if args.profile and args.train:
        ap.error("--profile profiles one inference forward; drop --train")
    if args.isolate and args.train:
        ap.error("--isolate times inference; --train already runs one model at a time")
    return run_benchmark(args, command="python tools/benchmark.py " + " ".join(argv))


if __name__ == "__main__":
    main()
