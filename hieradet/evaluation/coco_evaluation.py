"""detectron2's COCO evaluator, scored by ``faster-coco-eval`` (same numbers, several times faster)."""

import itertools
import json
import os

from detectron2.evaluation import COCOEvaluator as _D2COCOEvaluator
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from hieradet.checkpoint.atomic import atomic_open

from .scoring import COCO_BACKENDS, check_backend, coco_metrics, load_faster_gt, run_coco_eval

__all__ = ["COCOEvaluator"]


class COCOEvaluator(_D2COCOEvaluator):
    """detectron2's :class:`~detectron2.evaluation.COCOEvaluator` (same arguments, same metrics dict: AP, AP50,
    AP75, APs, APm, APl and ``AP-<class>``, same ``coco_instances_results.json``) whose box and mask AP are
    computed by ``faster_coco_eval.COCOeval_faster``. Box proposals and keypoints keep detectron2's path.

    Args:
        dataset_name (str): a registered dataset (COCO json via ``json_file`` metadata, or convertible).
        tasks (tuple[str]): ``("bbox",)``, ``("bbox", "segm")``; default: from the predictions.
        distributed (bool): gather predictions from all ranks.
        output_dir (str): where to write ``instances_predictions.pth`` and ``coco_instances_results.json``.
        max_dets_per_image (int): detections per image for AP (default 100).
        backend (str): ``"faster"`` (default) or ``"pycocotools"`` (detectron2's own path, as before;
            on the command line: ``dataloader.evaluator.backend=pycocotools``).
        **kwargs: detectron2's other keyword arguments (``use_fast_impl``, ``kpt_oks_sigmas``,
            ``allow_cached_coco``).
    """

    def __init__(
        self,
        dataset_name,
        tasks=None,
        distributed=True,
        output_dir=None,
        *,
        max_dets_per_image=None,
        backend="faster",
        **kwargs,
    ):
        self._backend = check_backend(backend, COCO_BACKENDS, "COCO")
        if backend == "faster":  # detectron2's own C++ COCOeval is not used (nor its "not built" notice)
            kwargs.setdefault("use_fast_impl", False)
        super().__init__(dataset_name, tasks, distributed, output_dir, max_dets_per_image=max_dets_per_image, **kwargs)
        self._faster_gt = None  # loaded at the first evaluation, then reused

    def _eval_predictions(self, predictions, img_ids=None):
        coco_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(coco_results)
        if self._backend == "pycocotools" or not set(tasks) <= {"bbox", "segm"}:
            return super()._eval_predictions(predictions, img_ids=img_ids)

        if hasattr(self._metadata, "thing_dataset_id_to_contiguous_id"):
            to_dataset_id = {v: k for k, v in self._metadata.thing_dataset_id_to_contiguous_id.items()}
            for r in coco_results:
                if r["category_id"] not in to_dataset_id:
                    raise ValueError(
                        f"a prediction has class {r['category_id']}, but the dataset has only "
                        f"{len(to_dataset_id)} classes (0..{len(to_dataset_id) - 1})"
                    )
                r["category_id"] = to_dataset_id[r["category_id"]]
        if self._output_dir:
            path = os.path.join(self._output_dir, "coco_instances_results.json")
            self._logger.info(f"Saving results to {path}")
            with atomic_open(path, "w") as f:  # a kill never leaves a truncated results file
                f.write(json.dumps(coco_results))
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return

        self._logger.info("Evaluating predictions with faster-coco-eval ...")
        if coco_results and self._faster_gt is None:
            self._faster_gt = load_faster_gt(PathManager.get_local_path(self._metadata.json_file))
        class_names = self._metadata.get("thing_classes")
        for task in sorted(tasks):
            coco_eval = (
                run_coco_eval(
                    self._faster_gt,
                    coco_results,
                    task,
                    max_dets_per_image=self._max_dets_per_image[2],
                    img_ids=img_ids,
                )
                if coco_results
                else None  # as detectron2: no detections, no scoring (NaN)
            )
            if coco_eval is None:
                self._logger.warning("No predictions from the model!")
            res = coco_metrics(coco_eval, task, class_names)
            self._logger.info(
                f"Evaluation results for {task}: \n"
                + create_small_table({k: v for k, v in res.items() if not k.startswith("AP-")})
            )
            self._results[task] = res
