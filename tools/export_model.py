#!/usr/bin/env python
"""Export a detector (boxes, scores, classes, masks) or its backbone features to ONNX or torch.export, with dynamic
image height and width.

  python tools/export_model.py --config-file COCO/mask_rcnn_hieradet_t_100ep.py --checkpoint model.pth \\
      --format onnx --output out/ [--backbone-only] [--check img1.jpg img2.jpg] [--eval] [key=value ...]

writes ``out/model.onnx`` (opset 18, onnxruntime's standard operators) or ``out/model.pt2`` (``torch.export.save``).
The graph takes one float32 (3, H, W) image, 0-255, in the config's input_format, resized as the test augmentation
does, for any H, W from ``--min-size`` up to ``--max-size``; it normalises and pads inside. The whole detector
(Mask R-CNN, Cascade Mask R-CNN or their box-only forms) returns ``boxes (N, 4)`` in input pixels, ``scores (N,)``,
``classes (N,)`` int64 and, with a mask head, ``masks (N, H, W)`` bool; ``--backbone-only`` returns the FPN features
(p2..p6 or the config's names). ``--check`` runs the file and the eager model on the images and prints the largest
differences; ``--eval`` evaluates both on the config's test set (exit status 1 if an AP differs by more than 0.1).
A model part the detector export does not handle is refused by name (see ``hieradet.export``).
"""

import argparse
import sys
import time

import torch


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, help="LazyConfig defining `model`, or a hieradet.model_zoo name")
    p.add_argument("--checkpoint", help="model weights (default: the config's train.init_checkpoint, if any)")
    p.add_argument("--format", required=True, choices=("onnx", "torch_export"), help="output format")
    p.add_argument("--output", required=True, help="folder for model.onnx / model.pt2 (created)")
    p.add_argument("--backbone-only", action="store_true", help="export the backbone (trunk + FPN) features")
    p.add_argument("--max-size", type=int, help="largest image side the file accepts (default: the test size)")
    p.add_argument("--min-size", type=int, help="smallest image side the file accepts (default: the smallest it can)")
    p.add_argument("--check", nargs="+", metavar="IMAGE", help="compare the exported file with eager on images")
    p.add_argument(
        "--eval",
        action="store_true",
        help="evaluate the exported detector and the eager model on the config's test set (dataloader.test and\n"
        "dataloader.evaluator) and print both APs; exit status 1 if an AP differs by more than 0.1",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: key=value ...")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    from detectron2.config import LazyConfig

    from hieradet.export import (
        ExportError,
        ap_differences,
        check_exported,
        config_max_size,
        describe_detection_diffs,
        evaluate_exported,
        export_model,
        load_exported,
        read_test_image,
        require_test_set,
    )
    from hieradet.model_zoo import resolve_config_path

    try:
        config_file = resolve_config_path(args.config_file)
    except FileNotFoundError:
        print(f"error: config file not found: {args.config_file} (neither a file nor a model_zoo name)")
        return 2
    if args.eval and args.backbone_only:
        print("error: --eval evaluates a whole detector; drop --backbone-only")
        return 2
    cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), list(args.opts or []))
    if args.eval:
        try:
            require_test_set(cfg)  # before the export, which takes a while
        except ValueError as e:
            print(f"error: {e}")
            return 2
    torch.manual_seed(0)
    start = time.perf_counter()
    try:
        path, model = export_model(
            cfg,
            args.checkpoint,
            args.format,
            args.output,
            backbone_only=args.backbone_only,
            max_size=args.max_size,
            min_size=args.min_size,
        )
    except (ExportError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}")
        return 2
    max_size = args.max_size or config_max_size(cfg, model)
    what = "backbone features" if args.backbone_only else "detector"
    print(f"wrote {path} ({what}) in {time.perf_counter() - start:.1f} s (image sides up to {max_size} px)")
    run = load_exported(path, max_size) if (args.check or args.eval) else None
    if args.check:
        images = [read_test_image(cfg, model, f) for f in args.check]
        results = check_exported(run, model, images, max_size, detector=not args.backbone_only)
        for f, img, diffs in zip(args.check, images, results):
            if args.backbone_only:
                worst = max(diffs.values())
                detail = ", ".join(f"{k} {v:.3g}" for k, v in diffs.items())
                print(f"{f} {tuple(img.shape[1:])}: max |exported - eager| = {worst:.3g} ({detail})")
            else:
                print(f"{f} {tuple(img.shape[1:])}: {describe_detection_diffs(diffs)}")
    if args.eval:
        aps = ap_differences(evaluate_exported(cfg, model, run))
        for task, (eager, exported) in aps.items():
            print(f"{task} AP: eager {eager:.2f}, exported {exported:.2f} (difference {exported - eager:+.2f})")
        if any(abs(a - b) > 0.1 for a, b in aps.values()):
            print("error: the exported file's AP differs from eager by more than 0.1")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
