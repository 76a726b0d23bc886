"""Evaluation: detectron2's COCO and LVIS evaluators scored by ``faster-coco-eval`` (identical numbers, several
times faster; ``backend="pycocotools"`` / ``"lvis"`` keeps the reference packages), and the ``lvis`` NumPy patch.

Importing this package applies :func:`patch_lvis_numpy` when ``lvis`` is installed (see :mod:`.lvis_compat`).
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

try:
    patch_lvis_numpy()
except ImportError:  # lvis is optional until LVIS evaluation is used; LVISEvaluator raises then
    pass
