"""Soft-NMS (Bodla et al., ICCV 2017) for detectron2's Fast R-CNN box predictors.

Greedy NMS deletes every box that overlaps a higher-scoring box of the same class by more than a
threshold. Soft-NMS keeps those boxes and *decays* their scores instead:

* ``"linear"``: ``s <- s * (1 - iou)`` for boxes with ``iou > iou_threshold`` (the abs-win paper's
  system-level results use this one),
* ``"gaussian"``: ``s <- s * exp(-iou**2 / sigma)`` for every box,
* ``"none"``: classic hard NMS (``s <- 0`` when ``iou > iou_threshold``).

Boxes whose decayed score drops below ``score_threshold`` are discarded. Selection is greedy on the
*current* scores, so the selected scores never increase: the first ``k`` selections are the final top
``k``, which lets inference stop early at ``topk_per_image``.

Usage in a LazyConfig (Mask R-CNN)::

    model.roi_heads.box_predictor._target_ = SoftNMSFastRCNNOutputLayers
    model.roi_heads.box_predictor.soft_nms_method = "linear"

and for Cascade R-CNN, whose final detections come from the averaged scores of all stages,
``model.roi_heads._target_ = SoftNMSCascadeROIHeads`` plus the predictor change for every stage;
:func:`use_soft_nms` does either for a model config.
"""

from typing import List, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import batched_nms
from detectron2.modeling.roi_heads import CascadeROIHeads, FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances, pairwise_iou

__all__ = [
    "SOFT_NMS_METHODS",
    "soft_nms",
    "batched_soft_nms",
    "fast_rcnn_inference_soft_nms",
    "SoftNMSFastRCNNOutputLayers",
    "SoftNMSCascadeROIHeads",
    "use_soft_nms",
]

SOFT_NMS_METHODS = ("none", "linear", "gaussian")


def _check_args(method: str, sigma: float, iou_threshold: float) -> None:
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"soft-NMS method must be one of {SOFT_NMS_METHODS}, got {method!r}")
    if method == "gaussian" and not sigma > 0:
        raise ValueError(f"gaussian soft-NMS needs sigma > 0, got {sigma}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"soft-NMS iou_threshold must be in [0, 1], got {iou_threshold}")


def soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    method: str = "linear",
    sigma: float = 0.5,
    iou_threshold: float = 0.3,
    score_threshold: float = 0.001,
    max_dets: int = -1,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Soft-NMS over one set of boxes (all treated as one class).

    Args:
        boxes (Tensor): (N, 4) boxes in XYXY format.
        scores (Tensor): (N,) scores.
        method (str): ``"linear"``, ``"gaussian"`` or ``"none"`` (hard NMS).
        sigma (float): width of the gaussian decay.
        iou_threshold (float): overlap above which ``"linear"`` and ``"none"`` act.
        score_threshold (float): boxes whose (decayed) score falls below it are dropped.
        max_dets (int): stop after this many selections (< 0: no limit). Exact, since selected
            scores are non-increasing.

    Returns:
        (Tensor, Tensor): indexes into ``boxes`` of the kept boxes in selection order (int64), and
        their decayed scores (non-increasing).
    """
    _check_args(method, sigma, iou_threshold)
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"expected (N, 4) boxes and (N,) scores, got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    current = scores.detach().clone().float()
    remaining = torch.nonzero(current >= score_threshold).flatten()
    keep: List[int] = []
    kept_scores: List[torch.Tensor] = []
    box_list = Boxes(boxes.detach().float())
    while remaining.numel() > 0 and (max_dets < 0 or len(keep) < max_dets):
        best = torch.argmax(current[remaining])
        i = remaining[best]
        keep.append(int(i))
        kept_scores.append(current[i])
        remaining = torch.cat([remaining[:best], remaining[best + 1 :]])
        if remaining.numel() == 0:
            break
        iou = pairwise_iou(box_list[i.view(1)], box_list[remaining])[0]
        if method == "linear":
            decay = torch.where(iou > iou_threshold, 1.0 - iou, torch.ones_like(iou))
        elif method == "gaussian":
            decay = torch.exp(-(iou * iou) / sigma)
        else:
            decay = (iou <= iou_threshold).to(iou.dtype)
        current[remaining] = current[remaining] * decay
        alive = current[remaining] >= score_threshold
        if method == "none":
            alive &= decay > 0
        remaining = remaining[alive]
    keep_t = torch.tensor(keep, dtype=torch.int64, device=boxes.device)
    scores_t = torch.stack(kept_scores).to(scores.dtype) if kept_scores else scores.new_zeros(0)
    return keep_t, scores_t


def batched_soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    method: str = "linear",
    sigma: float = 0.5,
    iou_threshold: float = 0.3,
    score_threshold: float = 0.001,
    max_dets: int = -1,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Soft-NMS applied independently per category ``idxs`` (boxes of different categories never
    interact). Arguments and returns as :func:`soft_nms`; the selection order is global (by score)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device), scores.new_zeros(0)
    # shift each category to its own disjoint region, so cross-category IoU is exactly 0
    offset = (boxes.max() - boxes.min() + 1) * idxs.to(boxes.dtype)
    shifted = boxes - boxes.min() + offset[:, None]
    return soft_nms(shifted, scores, method, sigma, iou_threshold, score_threshold, max_dets)


def fast_rcnn_inference_soft_nms(
    boxes: List[torch.Tensor],
    scores: List[torch.Tensor],
    image_shapes: List[Tuple[int, int]],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
    method: str = "linear",
    sigma: float = 0.5,
    soft_score_thresh: float = 0.001,
) -> Tuple[List[Instances], List[torch.Tensor]]:
    """Per-image, per-class score filtering + soft-NMS + top-k of Fast R-CNN outputs.

    Same inputs and outputs as detectron2's ``fast_rcnn_inference``, plus the soft-NMS ``method``,
    ``sigma`` and ``soft_score_thresh`` (the threshold below which decayed boxes are dropped).
    ``method="none"`` is hard NMS with ``nms_thresh``.
    """
    results, kept = [], []
    for boxes_i, scores_i, shape in zip(boxes, scores, image_shapes):
        inst, idx = _single_image(
            boxes_i, scores_i, shape, score_thresh, nms_thresh, topk_per_image, method, sigma, soft_score_thresh
        )
        results.append(inst)
        kept.append(idx)
    return results, kept


def _single_image(boxes, scores, image_shape, score_thresh, nms_thresh, topk, method, sigma, soft_score_thresh):
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not finite.all():
        boxes, scores = boxes[finite], scores[finite]
    scores = scores[:, :-1]  # drop background
    num_reg = boxes.shape[1] // 4
    clipped = Boxes(boxes.reshape(-1, 4))
    clipped.clip(image_shape)
    boxes = clipped.tensor.view(-1, num_reg, 4)
    candidates = scores > score_thresh  # R x K
    rows_cls = candidates.nonzero()  # (R', 2): proposal index, class
    cand_boxes = boxes[rows_cls[:, 0], 0] if num_reg == 1 else boxes[candidates]
    cand_scores = scores[candidates]
    if method == "none":
        keep = batched_nms(cand_boxes, cand_scores, rows_cls[:, 1], nms_thresh)
        if topk >= 0:
            keep = keep[:topk]
        new_scores = cand_scores[keep]
    else:
        keep, new_scores = batched_soft_nms(
            cand_boxes, cand_scores, rows_cls[:, 1], method, sigma, nms_thresh, soft_score_thresh, topk
        )
    result = Instances(image_shape)
    result.pred_boxes = Boxes(cand_boxes[keep])
    result.scores = new_scores
    result.pred_classes = rows_cls[keep, 1]
    return result, rows_cls[keep, 0]


class SoftNMSFastRCNNOutputLayers(FastRCNNOutputLayers):
    """detectron2's ``FastRCNNOutputLayers`` whose inference uses soft-NMS.

    Training is unchanged. ``test_nms_thresh`` is the IoU threshold of the ``"linear"`` decay (and of
    hard NMS for ``"none"``); the paper's linear soft-NMS uses detectron2's usual 0.5 here.

    Args:
        soft_nms_method (str): ``"linear"`` (default), ``"gaussian"`` or ``"none"`` (plain NMS, identical
            to ``FastRCNNOutputLayers``).
        soft_nms_sigma (float): gaussian width.
        soft_nms_score_threshold (float): decayed boxes below this score are dropped.
        **kwargs: everything ``FastRCNNOutputLayers`` takes (``input_shape``, ``box2box_transform``,
            ``num_classes``, ``test_score_thresh``, ...).
    """

    @configurable
    def __init__(
        self,
        input_shape,
        *,
        soft_nms_method: str = "linear",
        soft_nms_sigma: float = 0.5,
        soft_nms_score_threshold: float = 0.001,
        **kwargs,
    ):
        super().__init__(input_shape, **kwargs)
        _check_args(soft_nms_method, soft_nms_sigma, self.test_nms_thresh)
        self.soft_nms_method = soft_nms_method
        self.soft_nms_sigma = soft_nms_sigma
        self.soft_nms_score_threshold = soft_nms_score_threshold

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        heads = cfg.MODEL.ROI_HEADS
        ret["soft_nms_method"] = heads.get("SOFT_NMS_METHOD", "linear")
        ret["soft_nms_sigma"] = heads.get("SOFT_NMS_SIGMA", 0.5)
        ret["soft_nms_score_threshold"] = heads.get("SOFT_NMS_SCORE_THRESH", 0.001)
        return ret

    def inference_from_probs(
        self, boxes: List[torch.Tensor], scores: List[torch.Tensor], image_shapes: List[Tuple[int, int]]
    ) -> Tuple[List[Instances], List[torch.Tensor]]:
        """Final detections from per-image predicted boxes (Ri, K*4 or 4) and probabilities (Ri, K+1)."""
        return fast_rcnn_inference_soft_nms(
            boxes,
            scores,
            image_shapes,
            self.test_score_thresh,
            self.test_nms_thresh,
            self.test_topk_per_image,
            self.soft_nms_method,
            self.soft_nms_sigma,
            self.soft_nms_score_threshold,
        )

    def inference(self, predictions, proposals):
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.predict_probs(predictions, proposals)
        return self.inference_from_probs(boxes, scores, [x.image_size for x in proposals])

    def extra_repr(self) -> str:
        return (
            f"soft_nms_method={self.soft_nms_method}, soft_nms_sigma={self.soft_nms_sigma}, "
            f"soft_nms_score_threshold={self.soft_nms_score_threshold}, test_nms_thresh={self.test_nms_thresh}"
        )


class SoftNMSCascadeROIHeads(CascadeROIHeads):
    """detectron2's ``CascadeROIHeads`` whose final detections go through the last stage's predictor.

    ``CascadeROIHeads`` runs hard NMS on the stage-averaged scores itself; this subclass hands those
    scores and the last stage's boxes to the last predictor's ``inference_from_probs`` when it has one
    (:class:`SoftNMSFastRCNNOutputLayers`), and behaves exactly like ``CascadeROIHeads`` otherwise.
    Training is unchanged. Takes the same arguments as ``CascadeROIHeads``.
    """

    def _forward_box(self, features, proposals, targets=None):
        last = self.box_predictor[-1]
        if self.training or not hasattr(last, "inference_from_probs"):
            return super()._forward_box(features, proposals, targets)
        feats = [features[f] for f in self.box_in_features]
        image_sizes = [x.image_size for x in proposals]
        probs_per_stage, boxes = [], None
        for stage in range(self.num_cascade_stages):
            if stage > 0:
                proposals = self._create_proposals_from_boxes(boxes, image_sizes)
            predictions = self._run_stage(feats, proposals, stage)
            boxes = self.box_predictor[stage].predict_boxes(predictions, proposals)
            probs_per_stage.append(self.box_predictor[stage].predict_probs(predictions, proposals))
        # the stage-averaged class probabilities, and the last stage's boxes
        probs = [sum(per_image) * (1.0 / self.num_cascade_stages) for per_image in zip(*probs_per_stage)]
        instances, _ = last.inference_from_probs(list(boxes), probs, image_sizes)
        return instances


def use_soft_nms(model_cfg, method: str = "linear", sigma: float = 0.5, score_threshold: float = 0.001):
    """Switches a LazyConfig model (``GeneralizedRCNN`` with standard or cascade ROI heads) to soft-NMS
    in place and returns it. ``model_cfg`` is the ``model`` node of the config."""
    _check_args(method, sigma, 0.0)
    heads = model_cfg.roi_heads
    if "box_predictors" in heads:
        predictors = heads.box_predictors
        heads._target_ = SoftNMSCascadeROIHeads
    elif "box_predictor" in heads:
        predictors = [heads.box_predictor]
    else:
        raise ValueError("use_soft_nms: model.roi_heads has neither box_predictor nor box_predictors")
    for p in predictors:
        p._target_ = SoftNMSFastRCNNOutputLayers
        p.soft_nms_method = method
        p.soft_nms_sigma = sigma
        p.soft_nms_score_threshold = score_threshold
    return model_cfg
