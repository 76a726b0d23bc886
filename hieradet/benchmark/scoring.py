"""Reference vs fast evaluation on generated COCO- and LVIS-scale problems: seconds and the largest metric gap.

:func:`make_problem` generates a ground truth (json dict) and detections (COCO result dicts) with what makes
evaluation non-trivial: objects of all sizes, crowd regions (COCO), images without objects, images without
detections, a category without ground truth, jittered / missed / wrong-class / duplicate detections, tied scores
and, for LVIS, r/c/f frequencies and per-image negative and not-exhaustive category lists. :func:`benchmark`
scores one problem with the reference package (pycocotools or lvis) and with faster-coco-eval.

Command line: ``python tools/benchmark.py eval`` (``--help``); default sizes are COCO val (5000 images, ~35k
objects, 500k detections, 80 categories) and an LVIS-style problem (1000 images, 1203 categories, 300 detections
per image).
"""

import contextlib
import io
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

__all__ = ["benchmark", "load_gt", "make_problem", "max_metric_difference", "score"]


def _polygon(x, y, w, h, sides, rng):
    """A convex polygon inscribed in the box (x, y, w, h), flattened [x0, y0, x1, y1, ...]."""
    t = np.sort(rng.uniform(0, 2 * np.pi, sides))
    px = x + w / 2 + np.cos(t) * w / 2
    py = y + h / 2 + np.sin(t) * h / 2
    return np.stack([px, py], 1).ravel().round(2).tolist()


def make_problem(
    num_images: int = 5000,
    num_categories: int = 80,
    objects_per_image: float = 7.0,
    dets_per_image: int = 100,
    fmt: str = "coco",
    masks: bool = False,
    seed: int = 0,
    crowd_fraction: float = 0.02,
    empty_image_fraction: float = 0.03,
    no_detection_fraction: float = 0.03,
    score_decimals: Optional[int] = 3,
) -> Tuple[dict, List[dict]]:
    """Generates a COCO or LVIS ground truth and detections for it.

    Args:
        num_images (int): images (sizes 240..640 px per side).
        num_categories (int): categories; the last one never has ground truth (>= 3 for LVIS: r/c/f).
        objects_per_image (float): mean objects per image (Poisson).
        dets_per_image (int): detections per image (jittered objects, then false positives up to this).
        fmt (str): ``"coco"`` or ``"lvis"`` (LVIS images carry ``neg_category_ids`` /
            ``not_exhaustive_category_ids``, categories a ``frequency``; no crowd regions).
        masks (bool): give objects polygon masks and detections RLE masks (for ``"segm"``).
        seed (int): everything is drawn from this seed.
        crowd_fraction (float): COCO objects marked ``iscrowd`` (with an RLE mask).
        empty_image_fraction, no_detection_fraction (float): images without objects / without detections.
        score_decimals (int): round scores to this many decimals (ties), None for none.

    Returns:
        (dict, list[dict]): the ground-truth json dict and the detections (COCO result format).
    """
    if fmt not in ("coco", "lvis"):
        raise ValueError(f"fmt must be 'coco' or 'lvis', got {fmt!r}")
    if num_categories < (3 if fmt == "lvis" else 2):
        raise ValueError(f"need at least {3 if fmt == 'lvis' else 2} categories for {fmt}, got {num_categories}")
    from pycocotools import mask as mask_util

    rng = np.random.default_rng(seed)
    k_gt = num_categories - 1  # the last category has no ground truth
    cat_p = 1.0 / np.arange(1, k_gt + 1) ** (1.0 if fmt == "lvis" else 0.3)
    cat_p /= cat_p.sum()

    def rle(poly, h, w):
        r = mask_util.merge(mask_util.frPyObjects([poly], h, w))
        r["counts"] = r["counts"].decode("ascii")
        return r

    def box(h, w):
        s = np.exp(rng.uniform(np.log(6), np.log(0.8 * min(h, w))))  # small, medium and large objects
        bw, bh = s * rng.uniform(0.6, 1.4), s * rng.uniform(0.6, 1.4)
        bw, bh = min(bw, w - 2), min(bh, h - 2)
        return [float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh)), float(bw), float(bh)]

    images, anns, results = [], [], []
    image_cats: Dict[int, set] = {}
    for img_id in range(1, num_images + 1):
        h, w = int(rng.integers(240, 641)), int(rng.integers(240, 641))
        images.append({"id": img_id, "height": h, "width": w, "file_name": f"{img_id:012d}.jpg"})
        n = 0 if rng.random() < empty_image_fraction else int(rng.poisson(objects_per_image))
        objs = []
        for _ in range(n):
            cat = int(rng.choice(k_gt, p=cat_p)) + 1
            b = box(h, w)
            ann = {"id": len(anns) + 1, "image_id": img_id, "category_id": cat, "bbox": [round(v, 2) for v in b]}
            crowd = fmt == "coco" and rng.random() < crowd_fraction
            poly = None
            if masks or crowd:
                poly = _polygon(*b, 8, rng)
                r = rle(poly, h, w)
                ann["segmentation"] = r if crowd else [poly]
                ann["area"] = float(mask_util.area(r))
            else:
                ann["area"] = b[2] * b[3]
            if fmt == "coco":
                ann["iscrowd"] = int(crowd)
            anns.append(ann)
            objs.append((ann, poly))
        image_cats[img_id] = {a["category_id"] for a, _ in objs}
        if rng.random() < no_detection_fraction:
            continue
        dets = []
        for a, poly in objs:
            if rng.random() < 0.15:
                continue  # missed
            for _ in range(1 + int(rng.random() < 0.2)):  # sometimes a duplicate
                x, y, bw, bh = a["bbox"]
                j = rng.normal(0, 0.08, 4) * [bw, bh, bw, bh]
                b = [x + j[0], y + j[1], max(bw + j[2], 1.0), max(bh + j[3], 1.0)]
                cat = a["category_id"] if rng.random() < 0.9 else int(rng.integers(1, num_categories + 1))
                # the object's own outline, shifted (masks overlap as much as the boxes do)
                outline = (np.asarray(poly).reshape(-1, 2) + j[:2]).ravel().tolist() if poly else None
                dets.append((cat, b, outline))
        while len(dets) < dets_per_image:  # false positives, including the category without ground truth
            dets.append((int(rng.integers(1, num_categories + 1)), box(h, w), None))
        for cat, b, outline in dets[:dets_per_image]:
            s = float(rng.uniform(0.01, 1.0))
            r = {"image_id": img_id, "category_id": cat, "bbox": [round(v, 2) for v in b]}
            r["score"] = round(s, score_decimals) if score_decimals is not None else s
            if masks:
                r["segmentation"] = rle(outline or _polygon(*b, 8, rng), h, w)
            results.append(r)

    categories = [{"id": c, "name": f"category_{c}", "supercategory": "thing"} for c in range(1, num_categories + 1)]
    if fmt == "lvis":
        for c in categories:
            c["frequency"] = "rcf"[int(rng.integers(0, 3))] if c["id"] > 3 else "rcf"[c["id"] - 1]
            c["synset"], c["synonyms"], c["def"] = f"{c['name']}.n.01", [c["name"]], c["name"]
        for img in images:
            present = sorted(image_cats[img["id"]])
            absent = [c for c in range(1, num_categories + 1) if c not in image_cats[img["id"]]]
            img["neg_category_ids"] = sorted(int(c) for c in rng.choice(absent, min(len(absent), 10), replace=False))
            ne = [c for c in present if rng.random() < 0.2]
            img["not_exhaustive_category_ids"] = ne
    gt = {"info": {"generator": "hieradet.benchmark.scoring"}, "images": images, "annotations": anns}
    gt["categories"] = categories
    return gt, results


def load_gt(gt: dict, fmt: str, backend: str):
    """The ground-truth API object ``backend`` scores against, built from a copy of the json dict ``gt``:
    ``faster_coco_eval.COCO`` (``"faster"``), ``pycocotools.coco.COCO`` or ``lvis.LVIS``."""
    import copy
    import logging

    from hieradet.evaluation.scoring import load_faster_gt

    if backend == "faster":
        return load_faster_gt(gt)
    if backend == "pycocotools":
        from pycocotools.coco import COCO

        api = COCO()
    else:
        from hieradet.evaluation.lvis_compat import patch_lvis_numpy

        patch_lvis_numpy()  # without lvis: an ImportError naming hieradet[lvis] and the --no-deps install
        from lvis import LVIS

        api = LVIS.__new__(LVIS)  # LVIS() only reads files; this is its constructor on a dict
        api.logger = logging.getLogger("lvis.lvis")
    api.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex() if backend == "pycocotools" else api._create_index()
    return api


def score(gt_api, results: List[dict], iou_type: str, fmt: str, backend: str, max_dets_per_image=None) -> dict:
    """The metrics dict detectron2's evaluator would report for ``results`` with ``backend`` (``"faster"``,
    ``"pycocotools"`` for COCO, ``"lvis"`` for LVIS) on ``gt_api`` (from :func:`load_gt`)."""
    from hieradet.evaluation.scoring import coco_metrics, lvis_metrics, run_coco_eval

    with contextlib.redirect_stdout(io.StringIO()):
        if fmt == "coco":
            names = [c["name"] for c in sorted(gt_api.dataset["categories"], key=lambda c: c["id"])]
            ev = run_coco_eval(gt_api, results, iou_type, backend=backend, max_dets_per_image=max_dets_per_image)
            return coco_metrics(ev, iou_type, names)
        return lvis_metrics(gt_api, results, iou_type, backend=backend, max_dets_per_image=max_dets_per_image)


def max_metric_difference(a: Dict[str, float], b: Dict[str, float]) -> float:
    """The largest absolute difference between two metrics dicts (same keys; NaN equals NaN, else inf)."""
    if set(a) != set(b):
        raise ValueError(f"different metrics: {sorted(set(a) ^ set(b))}")
    worst = 0.0
    for k in a:
        x, y = a[k], b[k]
        if np.isnan(x) and np.isnan(y):
            continue
        worst = max(worst, abs(x - y) if not (np.isnan(x) or np.isnan(y)) else float("inf"))
    return worst


def benchmark(
    fmt: str = "coco", iou_type: str = "bbox", repeats: int = 1, print_fn=print, **problem_kwargs
) -> Dict[str, float]:
    """Scores one generated problem with the reference backend and with faster-coco-eval.

    Args:
        fmt (str): ``"coco"`` (reference: pycocotools) or ``"lvis"`` (reference: the ``lvis`` package).
        iou_type (str): ``"bbox"`` or ``"segm"`` (``segm`` generates masks).
        repeats (int): time each backend this many times (the best is reported).
        print_fn: where the summary line goes (None: nowhere).
        **problem_kwargs: :func:`make_problem` arguments (sizes, seed).

    Returns:
        dict: ``reference_s``, ``fast_s``, ``speedup``, ``max_abs_diff`` (in AP points, i.e. percent),
        ``AP_reference``, ``AP_fast``, ``num_images``, ``num_gt``, ``num_dets``.
    """
    from hieradet.evaluation.lvis_compat import patch_lvis_numpy

    if fmt == "lvis":
        patch_lvis_numpy()
    reference = "pycocotools" if fmt == "coco" else "lvis"
    problem_kwargs.setdefault("masks", iou_type == "segm")
    gt, results = make_problem(fmt=fmt, **problem_kwargs)
    times, metrics = {}, {}
    for backend in (reference, "faster"):
        best = float("inf")
        for _ in range(repeats):
            gt_api = load_gt(gt, fmt, backend)  # loading the ground truth is not timed (evaluators load it once)
            start = time.perf_counter()
            metrics[backend] = score(gt_api, results, iou_type, fmt, backend)
            best = min(best, time.perf_counter() - start)
        times[backend] = best
    out = {
        "reference_s": times[reference],
        "fast_s": times["faster"],
        "speedup": times[reference] / times["faster"],
        "max_abs_diff": max_metric_difference(metrics[reference], metrics["faster"]),
        "AP_reference": metrics[reference]["AP"],
        "AP_fast": metrics["faster"]["AP"],
        "num_images": len(gt["images"]),
        "num_gt": len(gt["annotations"]),
        "num_dets": len(results),
    }
    if print_fn is not None:
        print_fn(
            f"{fmt} {iou_type}: {out['num_images']} images, {out['num_gt']} objects, {out['num_dets']} detections, "
            f"{len(gt['categories'])} categories | {reference} {out['reference_s']:.2f} s, faster-coco-eval "
            f"{out['fast_s']:.2f} s ({out['speedup']:.1f}x) | AP {out['AP_reference']:.6f} vs {out['AP_fast']:.6f}, "
            f"max |difference| over {len(metrics['faster'])} metrics {out['max_abs_diff']:.2e}"
        )
    return out


def main(argv=None) -> List[dict]:
    """Command line of ``tools/benchmark.py eval``: runs :func:`benchmark` for each ``--fmt`` x ``--iou-type``."""
    import argparse
    import json
    import os

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fmt", nargs="+", default=["coco", "lvis"], choices=["coco", "lvis"])
    parser.add_argument("--iou-type", nargs="+", default=["bbox"], choices=["bbox", "segm"])
    parser.add_argument("--coco-images", type=int, default=5000)
    parser.add_argument("--coco-categories", type=int, default=80)
    parser.add_argument("--coco-dets", type=int, default=100, help="detections per image (COCO)")
    parser.add_argument("--lvis-images", type=int, default=1000)
    parser.add_argument("--lvis-categories", type=int, default=1203)
    parser.add_argument("--lvis-dets", type=int, default=300, help="detections per image (LVIS)")
    parser.add_argument("--objects", type=float, default=7.0, help="mean objects per image")
    parser.add_argument("--repeats", type=int, default=1, help="time each backend this often (best kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this json file")
    args = parser.parse_args(argv)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average (1 min) at start: {load:.2f} on {os.cpu_count()} CPUs")
    rows = []
    for fmt in args.fmt:
        sizes = (
            dict(num_images=args.coco_images, num_categories=args.coco_categories, dets_per_image=args.coco_dets)
            if fmt == "coco"
            else dict(num_images=args.lvis_images, num_categories=args.lvis_categories, dets_per_image=args.lvis_dets)
        )
        for iou_type in args.iou_type:
            row = benchmark(
                fmt, iou_type, repeats=args.repeats, objects_per_image=args.objects, seed=args.seed, **sizes
            )
            rows.append(dict(row, fmt=fmt, iou_type=iou_type, load_at_start=load))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
