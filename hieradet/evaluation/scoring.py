"""COCO and LVIS scoring of detection results on ``faster-coco-eval`` (C++), or on the reference packages.

Backends:
    ``"faster"``       ``faster_coco_eval.COCOeval_faster`` (COCO-style, or ``lvis_style=True`` for LVIS), the default.
    ``"pycocotools"``  ``pycocotools.cocoeval.COCOeval`` as detectron2 calls it (COCO only).
    ``"lvis"``         the ``lvis`` package's ``LVISEval`` as detectron2 calls it (LVIS only).

Both fast paths give the same numbers as the reference packages (``tests/test_eval_equivalence.py`` compares every
reported metric to 1e-6); they differ in speed (``python -m hieradet.benchmark.scoring``).

Inputs are checked first: results naming images or categories the ground truth lacks, and a ground truth without
images or annotations, raise ``ValueError`` naming the cause instead of scoring silently wrong.
"""

import contextlib
import copy
import io
import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

__all__ = [
    "COCO_BACKENDS",
    "LVIS_BACKENDS",
    "check_results",
    "coco_metrics",
    "limit_dets_per_image",
    "load_faster_gt",
    "lvis_metrics",
    "run_coco_eval",
]

COCO_BACKENDS = ("faster", "pycocotools")
LVIS_BACKENDS = ("faster", "lvis")
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
_FASTER_LVIS_KEYS = ("AP_all", "AP_50", "AP_75", "AP_small", "AP_medium", "AP_large", "APr", "APc", "APf")

logger = logging.getLogger(__name__)


def check_backend(backend: str, allowed: Sequence[str], what: str) -> str:
    if backend not in allowed:
        raise ValueError(f"{what} evaluation backend must be one of {tuple(allowed)}, got {backend!r}")
    return backend


def load_faster_gt(gt: Union[str, os.PathLike, dict]):
    """Loads a COCO/LVIS ground-truth json (path or dict) as a ``faster_coco_eval.COCO``; a dict is deep-copied
    (evaluation annotates the ground truth in place)."""
    try:
        from faster_coco_eval import COCO
    except ImportError as e:
        raise ImportError(
            "the fast evaluator needs `faster-coco-eval`, a requirement of hieradet that this environment lacks (was "
            "hieradet installed with --no-deps?): pip install 'faster-coco-eval>=1.6', or choose a reference backend: "
            "evaluator backend='pycocotools' (COCO) / 'lvis' (LVIS)"
        ) from e
    if isinstance(gt, dict):
        # copied here, once: COCO(use_deepcopy=True) would also deep-copy every results list given to loadRes
        return COCO(copy.deepcopy(gt))
    return COCO(os.fspath(gt))


def check_results(dataset: dict, results: Iterable[dict], source: str = "the ground truth") -> None:
    """Raises ``ValueError`` when ``dataset`` (a COCO/LVIS json dict) has no images or no annotations, or when
    ``results`` (COCO result dicts) name image or category ids that ``dataset`` does not have."""
    images, anns = dataset.get("images") or [], dataset.get("annotations") or []
    if not images or not anns:
        raise ValueError(
            f"{source} is empty ({len(images)} images, {len(anns)} annotations): there is nothing to score "
            "the results against"
        )
    img_ids = {img["id"] for img in images}
    cat_ids = {cat["id"] for cat in dataset.get("categories") or []}
    bad_imgs, bad_cats = set(), set()
    for r in results:
        if r["image_id"] not in img_ids:
            bad_imgs.add(r["image_id"])
        if r["category_id"] not in cat_ids:
            bad_cats.add(r["category_id"])
    if bad_imgs:
        raise ValueError(
            f"the results name {len(bad_imgs)} image id(s) that {source} does not have, e.g. "
            f"{sorted(bad_imgs)[:5]}: were they predicted on another dataset?"
        )
    if bad_cats:
        raise ValueError(
            f"the results name {len(bad_cats)} category id(s) missing from {source}'s categories, e.g. "
            f"{sorted(bad_cats)[:5]} ({len(cat_ids)} categories there): wrong class mapping or dataset?"
        )


def _results_for(results: List[dict], iou_type: str) -> List[dict]:
    """Per-task copies of the result dicts (the COCO APIs write ``area``/``id`` into them). For masks the box is
    dropped, as detectron2 does, so that the mask area decides small/medium/large."""
    if iou_type == "segm":
        return [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    return [dict(r) for r in results]


def run_coco_eval(
    coco_gt,
    results: List[dict],
    iou_type: str,
    *,
    backend: str = "faster",
    max_dets_per_image: Optional[int] = None,
    img_ids: Optional[Sequence[int]] = None,
):
    """Scores COCO results and returns the evaluated COCOeval object (``.stats``, ``.eval["precision"]``).

    Args:
        coco_gt: the ground truth, a ``faster_coco_eval.COCO`` for ``"faster"`` (see :func:`load_faster_gt`) or a
            ``pycocotools.coco.COCO`` for ``"pycocotools"``.
        results (list[dict]): COCO-format results (not modified), at least one.
        iou_type (str): ``"bbox"`` or ``"segm"``.
        backend (str): ``"faster"`` or ``"pycocotools"``.
        max_dets_per_image (int): detections per image for AP (default 100); maxDets is ``[1, 10, this]``.
        img_ids (list[int]): evaluate only these images (default: all).
    """
    check_backend(backend, COCO_BACKENDS, "COCO")
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    check_results(coco_gt.dataset, results)
    max_dets = [1, 10, 100 if max_dets_per_image is None else int(max_dets_per_image)]
    if backend == "pycocotools":
        from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):
            return _evaluate_predictions_on_coco(
                coco_gt,
                _results_for(results, iou_type),
                iou_type,
                cocoeval_fn=COCOeval,
                img_ids=img_ids,
                max_dets_per_image=max_dets,
            )
    from faster_coco_eval import COCOeval_faster

    coco_dt = coco_gt.loadRes(_results_for(results, iou_type))
    coco_eval = COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=logger.debug)
    coco_eval.params.maxDets = max_dets
    if img_ids is not None:
        coco_eval.params.imgIds = list(img_ids)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval


def coco_metrics(coco_eval, iou_type: str, class_names: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """detectron2's COCO metrics dict from an evaluated COCOeval: AP, AP50, AP75, APs, APm, APl in percent (NaN
    where undefined), plus ``"AP-<name>"`` per category when more than one class name is given (in the order of
    the ground truth's sorted category ids). ``coco_eval`` None (no detections) gives all-NaN AP."""
    if coco_eval is None:
        return {m: float("nan") for m in COCO_METRICS}
    stats = coco_eval.stats
    out = {m: float(stats[i] * 100) if stats[i] >= 0 else float("nan") for i, m in enumerate(COCO_METRICS)}
    if class_names is None or len(class_names) <= 1:
        return out
    precision = coco_eval.eval["precision"]  # (iou, recall, category, area, max dets)
    if precision.shape[2] != len(class_names):
        raise ValueError(f"{len(class_names)} class names for {precision.shape[2]} evaluated categories")
    for k, name in enumerate(class_names):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[f"AP-{name}"] = float(np.mean(p) * 100) if p.size else float("nan")
    return out


def limit_dets_per_image(results: List[dict], max_dets: int) -> List[dict]:
    """The ``max_dets`` highest-scoring results of each image, grouped by image in first-seen order (what
    ``lvis.LVISResults`` keeps, in its order, so that ties resolve the same way)."""
    by_img: Dict[int, List[dict]] = {}
    for r in results:
        by_img.setdefault(r["image_id"], []).append(r)
    out = []
    for anns in by_img.values():
        if max_dets >= 0 and len(anns) > max_dets:
            anns = sorted(anns, key=lambda r: r["score"], reverse=True)[:max_dets]
        out.extend(anns)
    return out


def _drop_unverified(dataset: dict, results: List[dict]) -> List[dict]:
    """The results whose category the image's LVIS labels verify (annotated there, or in its
    ``neg_category_ids``), in their order. LVIS evaluation ignores the others; dropping them here (after the
    per-image limit, as ``lvis`` does) gives the same numbers and avoids a faster-coco-eval 1.8.0 crash
    (``IndexError: unordered_map::at`` for masks) on an image whose detections are all unverified."""
    verified: Dict[int, set] = {img["id"]: set(img.get("neg_category_ids") or ()) for img in dataset["images"]}
    for a in dataset["annotations"]:
        verified[a["image_id"]].add(a["category_id"])
    return [r for r in results if r["category_id"] in verified[r["image_id"]]]


def lvis_metrics(
    lvis_gt, results: List[dict], iou_type: str, *, backend: str = "faster", max_dets_per_image: Optional[int] = None
) -> Dict[str, float]:
    """detectron2's LVIS metrics dict: AP, AP50, AP75, APs, APm, APl, APr, APc, APf in percent (an undefined
    value is -100, as with the ``lvis`` package; no detections at all give NaN).

    Args:
        lvis_gt: the ground truth, a ``faster_coco_eval.COCO`` for ``"faster"`` or an ``lvis.LVIS`` for ``"lvis"``.
        results (list[dict]): LVIS-format results (1-based category ids; not modified).
        iou_type (str): ``"bbox"`` or ``"segm"``.
        backend (str): ``"faster"`` or ``"lvis"``.
        max_dets_per_image (int): detections kept per image, highest scores first (LVIS default 300).
    """
    check_backend(backend, LVIS_BACKENDS, "LVIS")
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    check_results(lvis_gt.dataset, results)
    if len(results) == 0:
        return {m: float("nan") for m in LVIS_METRICS}
    max_dets = 300 if max_dets_per_image is None else int(max_dets_per_image)
    if backend == "lvis":
        from detectron2.evaluation.lvis_evaluation import _evaluate_predictions_on_lvis

        from .lvis_compat import patch_lvis_numpy

        patch_lvis_numpy()
        return _evaluate_predictions_on_lvis(
            lvis_gt, _results_for(results, iou_type), iou_type, max_dets_per_image=max_dets
        )
    from faster_coco_eval import COCOeval_faster

    kept = _drop_unverified(lvis_gt.dataset, limit_dets_per_image(_results_for(results, iou_type), max_dets))
    lvis_eval = COCOeval_faster(lvis_gt, lvis_gt.loadRes(kept), iou_type, lvis_style=True, print_function=logger.debug)
    # LVIS limits detections per image (above), not per image and category: no cap below that
    lvis_eval.params.maxDets = [max(max_dets, 1) if max_dets >= 0 else len(kept)]
    lvis_eval.evaluate()
    lvis_eval.accumulate()
    lvis_eval.summarize()
    stats = lvis_eval.stats_as_dict
    return {m: float(stats[k] * 100) for m, k in zip(LVIS_METRICS, _FASTER_LVIS_KEYS)}
