"""Evaluate an exported whole detector on the config's test set next to the eager model (``tools/export_model.py
--eval``): the same loader, mapper and evaluator, so the two results differ only by what the export changed."""

from typing import Callable, Dict, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ExportedDetector", "ap_differences", "evaluate_exported", "require_test_set"]


class ExportedDetector(nn.Module):
    """An exported detector (a runner from :func:`hieradet.export.load_exported`) behind detectron2's model
    interface: ``forward(batched_inputs)`` returns ``[{"instances": Instances}]`` like ``GeneralizedRCNN``.

    Args:
        run: callable mapping a float32 ``(3, H, W)`` image to ``(boxes, scores, classes[, masks])``.

    Each input's ``image`` (the test mapper's output, already resized) goes through ``run``; the detections are
    then mapped to the input's ``height`` x ``width`` as detectron2's ``detector_postprocess`` does for the boxes.
    The masks come out of the file pasted at the resized size, so when ``height`` / ``width`` differ they are
    resized to it (nearest), where eager pastes the 28 x 28 masks at the original size directly.
    """

    def __init__(self, run: Callable[[torch.Tensor], Sequence[torch.Tensor]]):
        super().__init__()
        self.run = run

    def forward(self, batched_inputs):
        from detectron2.structures import Boxes, Instances

        results = []
        for x in batched_inputs:
            image = x["image"].to(torch.float32)
            out = self.run(image)
            h, w = image.shape[1:]
            height, width = int(x.get("height", h)), int(x.get("width", w))
            boxes = out[0].clone()
            if (height, width) != (h, w):
                boxes[:, 0::2] *= width / w
                boxes[:, 1::2] *= height / h
                boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=width)
                boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=height)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            inst = Instances((height, width))
            inst.pred_boxes, inst.scores, inst.pred_classes = Boxes(boxes[keep]), out[1][keep], out[2][keep]
            if len(out) > 3:
                masks = out[3][keep]
                if (height, width) != (h, w):
                    masks = F.interpolate(masks[:, None].float(), size=(height, width), mode="nearest")[:, 0] > 0.5
                inst.pred_masks = masks
            results.append({"instances": inst})
        return results


def require_test_set(cfg) -> None:
    """Raise ``ValueError`` unless ``cfg`` has what :func:`evaluate_exported` runs: ``dataloader.test`` and
    ``dataloader.evaluator``."""
    for key in ("test", "evaluator"):
        if key not in (cfg.get("dataloader") or {}):
            raise ValueError(
                f"--eval needs cfg.dataloader.{key} (the test loader and its evaluator), which this config lacks"
            )


def evaluate_exported(cfg, model: nn.Module, run) -> Dict[str, Dict]:
    """``{"eager": ..., "exported": ...}``: ``cfg.dataloader.evaluator`` results of ``model`` and of the exported
    file's runner ``run`` on ``cfg.dataloader.test`` (a fresh evaluator for each)."""
    from detectron2.config import instantiate
    from detectron2.evaluation import inference_on_dataset

    require_test_set(cfg)
    results = {}
    for name, detector in (("eager", model), ("exported", ExportedDetector(run))):
        results[name] = inference_on_dataset(
            detector, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
        )
    return results


def ap_differences(results: Dict[str, Dict]) -> Dict[str, tuple]:
    """``{task: (eager AP, exported AP)}`` for each task (``bbox``, ``segm``) of :func:`evaluate_exported`'s
    result that reports an ``AP``."""
    eager, exported = results["eager"], results["exported"]
    return {
        task: (float(eager[task]["AP"]), float(exported[task]["AP"]))
        for task in eager
        if isinstance(eager[task], dict) and "AP" in eager[task] and task in exported
    }
