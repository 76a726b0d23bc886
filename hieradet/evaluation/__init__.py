"""Evaluation: detectron2's COCO and LVIS evaluators scored by ``faster-coco-eval`` (identical numbers, several
times faster; ``backend="pycocotools"`` / ``"lvis"`` keeps the reference packages), and the ``lvis`` NumPy patch.

``lvis`` is a lazy extra: nothing here imports it until LVIS evaluation runs (our :class:`LVISEvaluator` and the
``"lvis"`` backend apply :func:`patch_lvis_numpy` themselves; call it before using detectron2's own LVISEvaluator).
"""

from .coco_evaluation import COCOEvaluator
from .lvis_compat import lvis_needs_patch, patch_lvis_numpy
from .lvis_evaluation import LVISEvaluator
from .scoring import check_results, coco_metrics, load_faster_gt, lvis_metrics, run_coco_eval

__all__ = [
    "COCOEvaluator",
    "LVISEvaluator",
    "check_results",
    "coco_metrics",
    "load_faster_gt",
    "lvis_metrics",
    "lvis_needs_patch",
    "patch_lvis_numpy",
    "run_coco_eval",
]
