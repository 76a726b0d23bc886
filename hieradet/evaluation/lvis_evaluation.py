"""detectron2's LVIS evaluator, scored by ``faster-coco-eval`` (same numbers, several times faster), or by the
``lvis`` package on current NumPy (see :mod:`.lvis_compat`)."""

import itertools
import json
import os

from detectron2.evaluation import LVISEvaluator as _D2LVISEvaluator
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from hieradet.checkpoint.atomic import atomic_open

from .lvis_compat import patch_lvis_numpy
from .scoring import LVIS_BACKENDS, check_backend, load_faster_gt, lvis_metrics

__all__ = ["LVISEvaluator"]


class LVISEvaluator(_D2LVISEvaluator):
    """detectron2's :class:`~detectron2.evaluation.LVISEvaluator` (same arguments, same metrics dict: AP, AP50,
    AP75, APs, APm, APl, APr, APc, APf; same ``lvis_instances_results.json``) whose box and mask AP are computed
    by ``faster_coco_eval.COCOeval_faster(lvis_style=True)``. Box proposals keep detectron2's path.

    Args:
        dataset_name (str): a registered dataset with ``json_file`` metadata (LVIS format).
        tasks (tuple[str]): ``("bbox",)``, ``("bbox", "segm")``; default: from the predictions.
        distributed (bool): gather predictions from all ranks.
        output_dir (str): where to write the predictions and the results json.
        max_dets_per_image (int): detections per image kept for AP (LVIS default 300).
        backend (str): ``"faster"`` (default) or ``"lvis"`` (the ``lvis`` package through detectron2, as before,
            with its NumPy-compat patch; on the command line: ``dataloader.evaluator.backend=lvis``).
    """

    def __init__(
        self, dataset_name, tasks=None, distributed=True, output_dir=None, *, max_dets_per_image=None, backend="faster"
    ):
        self._backend = check_backend(backend, LVIS_BACKENDS, "LVIS")
        patch_lvis_numpy()
        super().__init__(dataset_name, tasks, distributed, output_dir, max_dets_per_image=max_dets_per_image)
        self._faster_gt = None  # loaded at the first evaluation, then reused

    def _eval_predictions(self, predictions):
        if self._backend == "lvis":
            return super()._eval_predictions(predictions)
        lvis_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(lvis_results)
        if hasattr(self._metadata, "thing_dataset_id_to_contiguous_id"):
            to_dataset_id = {v: k for k, v in self._metadata.thing_dataset_id_to_contiguous_id.items()}
            for r in lvis_results:
                r["category_id"] = to_dataset_id[r["category_id"]]
        else:  # LVIS: contiguous 0-based -> 1-based ids
            for r in lvis_results:
                r["category_id"] += 1
        if self._output_dir:
            path = os.path.join(self._output_dir, "lvis_instances_results.json")
            self._logger.info(f"Saving results to {path}")
            with atomic_open(path, "w") as f:  # a kill never leaves a truncated results file
                f.write(json.dumps(lvis_results))
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return

        self._logger.info("Evaluating predictions with faster-coco-eval (LVIS style) ...")
        if self._faster_gt is None:
            self._faster_gt = load_faster_gt(PathManager.get_local_path(self._metadata.json_file))
        for task in sorted(tasks):
            res = lvis_metrics(self._faster_gt, lvis_results, task, max_dets_per_image=self._max_dets_per_image)
            self._logger.info(f"Evaluation results for {task}: \n" + create_small_table(res))
            self._results[task] = res
