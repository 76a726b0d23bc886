"""detectron2's LVIS evaluator, working on the NumPy we install (see :mod:`.lvis_compat`)."""

from detectron2.evaluation import LVISEvaluator as _D2LVISEvaluator

from .lvis_compat import patch_lvis_numpy

__all__ = ["LVISEvaluator"]


class LVISEvaluator(_D2LVISEvaluator):
    """detectron2's :class:`~detectron2.evaluation.LVISEvaluator` (same arguments, same numbers) with the
    ``lvis`` NumPy-compat patch applied first, so ``LVISEval.accumulate`` does not crash on NumPy >= 1.24.

    Args:
        dataset_name (str): a registered dataset with ``json_file`` metadata (LVIS format).
        tasks (tuple[str]): ``("bbox",)``, ``("bbox", "segm")``; default: from the predictions.
        distributed (bool): gather predictions from all ranks.
        output_dir (str): where to write the predictions and the results json.
        max_dets_per_image (int): detections per image kept for AP (LVIS default 300).
    """

    def __init__(self, dataset_name, tasks=None, distributed=True, output_dir=None, *, max_dets_per_image=None):
        patch_lvis_numpy()
        super().__init__(dataset_name, tasks, distributed, output_dir, max_dets_per_image=max_dets_per_image)
