"""Evaluation helpers: an LVIS evaluator that works on current NumPy.

Importing this package applies :func:`patch_lvis_numpy` when ``lvis`` is installed (see :mod:`.lvis_compat`).
"""

from .lvis_compat import lvis_needs_patch, patch_lvis_numpy
from .lvis_evaluation import LVISEvaluator

__all__ = ["LVISEvaluator", "lvis_needs_patch", "patch_lvis_numpy"]

try:
    patch_lvis_numpy()
except ImportError:  # lvis is optional until LVIS evaluation is used; LVISEvaluator raises then
    pass
