"""A traceable inference path of a whole detectron2 R-CNN (RPN + standard or cascade ROI heads, optional masks).

:class:`DetectorGraph` runs the model's own modules and weights (backbone, anchor generator, RPN head, box2box
transforms, ROI poolers, box heads and predictors, mask head) and re-implements, with tensor operations only, the
glue that detectron2 writes in Python: per-level top-k with a size-dependent ``k``, the finite / non-empty filters,
class-wise NMS (the offset-per-class form of batched NMS over ``torchvision::nms``), multi-level ROI pooling,
score thresholding and mask pasting. Counts that depend on the data (boxes left after a filter or NMS) stay
tensor sizes, so ``torch.export`` captures one program for every image size. The operations and their order are
the ones of detectron2's CPU inference (``GeneralizedRCNN.inference`` with ``do_postprocess=True`` and the output
size equal to the input size), so the detections equal the eager ones.
"""

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .core import ExportError, FeatureGraph

__all__ = ["DetectorGraph", "check_detector_supported"]

_ALTERNATIVE = "export the backbone features with --backbone-only and run detectron2's heads on them"


def _qualname(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _require_type(obj, allowed, part: str) -> None:
    if type(obj) not in allowed:
        names = ", ".join(c.__name__ for c in allowed)
        raise ExportError(
            f"whole-detector export does not handle {part} {_qualname(obj)} (it handles {names}, whose inference "
            f"it re-implements exactly); {_ALTERNATIVE}"
        )


def check_detector_supported(model: nn.Module) -> None:
    """Raise :class:`~hieradet.export.ExportError` naming the first part of ``model`` that
    :class:`DetectorGraph` does not re-implement (a subclass counts as another class: its inference may differ)."""
    from detectron2.modeling import GeneralizedRCNN
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
    from detectron2.modeling.proposal_generator import RPN
    from detectron2.modeling.roi_heads import CascadeROIHeads, FastRCNNOutputLayers, StandardROIHeads
    from detectron2.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead

    _require_type(model, (GeneralizedRCNN,), "the meta-architecture")
    _require_type(model.proposal_generator, (RPN,), "the proposal generator")
    _require_type(model.proposal_generator.anchor_generator, (DefaultAnchorGenerator,), "the anchor generator")
    heads = model.roi_heads
    _require_type(heads, (StandardROIHeads, CascadeROIHeads), "the ROI heads")
    predictors = heads.box_predictor if isinstance(heads, CascadeROIHeads) else [heads.box_predictor]
    for p in predictors:
        _require_type(p, (FastRCNNOutputLayers,), "the box predictor")
    if getattr(heads, "keypoint_on", False):
        raise ExportError(f"whole-detector export does not handle keypoint heads; {_ALTERNATIVE}")
    if heads.mask_on:
        _require_type(heads.mask_head, (MaskRCNNConvUpsampleHead,), "the mask head")
        if heads.mask_pooler is None:
            raise ExportError(f"whole-detector export needs a mask_pooler for the mask head; {_ALTERNATIVE}")
    if model.proposal_generator.anchor_generator.box_dim != 4:
        raise ExportError(f"whole-detector export handles axis-aligned boxes only; {_ALTERNATIVE}")


def _clip(boxes: torch.Tensor, h, w) -> torch.Tensor:
    """``Boxes.clip`` without its data-dependent finiteness assert."""
    return torch.stack(
        (
            boxes[:, 0].clamp(min=0, max=w),
            boxes[:, 1].clamp(min=0, max=h),
            boxes[:, 2].clamp(min=0, max=w),
            boxes[:, 3].clamp(min=0, max=h),
        ),
        dim=-1,
    )


def _nonempty(boxes: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    return ((boxes[:, 2] - boxes[:, 0]) > threshold) & ((boxes[:, 3] - boxes[:, 1]) > threshold)


def _batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou: float) -> torch.Tensor:
    """Class-wise NMS: indices kept, by decreasing score. Boxes of different groups are moved apart by an offset
    of ``group * (largest coordinate + 1)`` so that one NMS call never suppresses across groups. The boxes here are
    clipped (coordinates >= 0), so the 0 appended to the maximum only matters when there are no boxes at all."""
    from torchvision.ops import nms

    boxes = boxes.float()
    largest = torch.cat((boxes.reshape(-1), boxes.new_zeros(1))).max()
    shifted = boxes + (groups.to(boxes) * (largest + 1))[:, None]
    return nms(shifted, scores, iou)


class _Pooler(nn.Module):
    """detectron2's ``ROIPooler`` on one image's boxes without the data-dependent per-level gather: every box is
    pooled at every level (each ROIAlign output depends on its own box only) and the assigned level is selected."""

    def __init__(self, pooler: nn.Module):
        super().__init__()
        self.level_poolers = pooler.level_poolers
        self.min_level, self.max_level = pooler.min_level, pooler.max_level
        self.canonical_box_size, self.canonical_level = pooler.canonical_box_size, pooler.canonical_level

    def forward(self, features: List[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        rois = torch.cat((boxes.new_zeros(boxes.shape[0], 1), boxes), dim=1)
        pooled = [pool(x, rois) for pool, x in zip(self.level_poolers, features)]
        if len(pooled) == 1:
            return pooled[0]
        size = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        level = torch.floor(self.canonical_level + torch.log2(size / self.canonical_box_size + 1e-8))
        level = torch.clamp(level, min=self.min_level, max=self.max_level).to(torch.int64) - self.min_level
        out = pooled[0]
        for i in range(1, len(pooled)):
            out = torch.where((level == i)[:, None, None, None], pooled[i], out)
        return out


class DetectorGraph(nn.Module):
    """The per-image inference of a detectron2 ``GeneralizedRCNN`` (RPN; ``StandardROIHeads`` or
    ``CascadeROIHeads``; box-only or with a mask head) as one traceable module.

    Args:
        model: an eval-mode detectron2 ``GeneralizedRCNN`` (see :func:`check_detector_supported`).
        mask_threshold (float): threshold of the pasted mask probabilities (detectron2's ``detector_postprocess``
            default, 0.5).

    ``forward(image)`` takes a float32 ``(3, H, W)`` image (0-255, the model's ``input_format``, already resized)
    and returns ``(boxes (N, 4), scores (N,), classes (N,) int64[, masks (N, H, W) bool])`` in input pixels,
    :attr:`output_names` order, equal to ``model([{"image": image}])`` (whose output size is the input size).
    """

    def __init__(self, model: nn.Module, mask_threshold: float = 0.5):
        super().__init__()
        check_detector_supported(model)
        from detectron2.modeling.roi_heads import CascadeROIHeads

        self.features = FeatureGraph(model)
        self.size_divisibility, self.square_size = self.features.size_divisibility, self.features.square_size
        # smallest side the program takes: every feature map (p6 included) at least 2 px (torch.export bounds a
        # convolution on a 1 px map away)
        self.min_size = max(s.stride for s in model.backbone.output_shape().values()) + 1
        rpn, heads = model.proposal_generator, model.roi_heads
        self.rpn_in_features = list(rpn.in_features)
        self.anchor_generator, self.rpn_head = rpn.anchor_generator, rpn.rpn_head
        self.rpn_transform = rpn.box2box_transform
        self.pre_nms_topk, self.post_nms_topk = int(rpn.pre_nms_topk[False]), int(rpn.post_nms_topk[False])
        self.rpn_nms_thresh, self.min_box_size = float(rpn.nms_thresh), float(rpn.min_box_size)

        self.cascade = isinstance(heads, CascadeROIHeads)
        self.box_in_features = list(heads.box_in_features)
        self.box_pooler = _Pooler(heads.box_pooler)
        self.box_heads = heads.box_head if self.cascade else nn.ModuleList([heads.box_head])
        self.box_predictors = heads.box_predictor if self.cascade else nn.ModuleList([heads.box_predictor])
        self.mask_on = bool(heads.mask_on)
        if self.mask_on:
            self.mask_in_features = list(heads.mask_in_features)
            self.mask_pooler = _Pooler(heads.mask_pooler)
            self.mask_layers = heads.mask_head.layers
            self.cls_agnostic_mask = heads.mask_head.predictor.out_channels == 1
        self.mask_threshold = float(mask_threshold)
        self.output_names = ["boxes", "scores", "classes"] + (["masks"] if self.mask_on else [])

    # -- RPN: detectron2's RPN.forward + find_top_rpn_proposals for one image -------------------------------------
    def _proposals(self, feats: Dict[str, torch.Tensor], h, w) -> torch.Tensor:
        x = [feats[f] for f in self.rpn_in_features]
        anchors = self.anchor_generator(x)
        logits, deltas = self.rpn_head(x)
        scores, boxes, levels = [], [], []
        for i, (a, s, d) in enumerate(zip(anchors, logits, deltas)):
            s = s.permute(0, 2, 3, 1).flatten(1)[0]  # (Hi*Wi*A,)
            d = d.view(1, -1, 4, d.shape[-2], d.shape[-1]).permute(0, 3, 4, 1, 2).flatten(1, -2)[0]
            props = self.rpn_transform.apply_deltas(d, a.tensor)
            k = torch.sym_min(s.shape[0], self.pre_nms_topk)
            top, idx = s.topk(k)
            scores.append(top)
            boxes.append(props[idx])
            levels.append(torch.full_like(idx, i))
        scores, boxes, levels = torch.cat(scores), torch.cat(boxes), torch.cat(levels)
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
        boxes = _clip(boxes, h, w)
        keep = _nonempty(boxes, self.min_box_size)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = _batched_nms(boxes, scores, levels, self.rpn_nms_thresh)[: self.post_nms_topk]
        return boxes[keep]

    # -- ROI heads: StandardROIHeads / CascadeROIHeads._forward_box + fast_rcnn_inference_single_image ------------
    def _probs(self, predictor, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid() if predictor.use_sigmoid_ce else F.softmax(logits, dim=-1)

    def _detect(self, feats, proposals: torch.Tensor, h, w) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = [feats[f] for f in self.box_in_features]
        stage_probs, pred_boxes = [], proposals
        for k, (head, predictor) in enumerate(zip(self.box_heads, self.box_predictors)):
            if k > 0:  # a cascade stage refines the previous stage's (class-agnostic) boxes, clipped
                proposals = _clip(pred_boxes, h, w)
            logits, deltas = predictor(head(self.box_pooler(x, proposals)))
            pred_boxes = predictor.box2box_transform.apply_deltas(deltas, proposals)
            stage_probs.append(self._probs(predictor, logits))
        if self.cascade:
            probs = sum(stage_probs) * (1.0 / len(stage_probs))
        else:
            probs = stage_probs[0]
        predictor = self.box_predictors[-1]

        valid = torch.isfinite(pred_boxes).all(dim=1) & torch.isfinite(probs).all(dim=1)
        pred_boxes, probs = pred_boxes[valid], probs[valid]
        probs = probs[:, :-1]
        n_reg = pred_boxes.shape[1] // 4
        pred_boxes = _clip(pred_boxes.reshape(-1, 4), h, w).view(-1, n_reg, 4)
        above = probs > predictor.test_score_thresh
        inds = above.nonzero()
        boxes = pred_boxes[inds[:, 0], 0] if n_reg == 1 else pred_boxes[above]
        scores = probs[above]
        keep = _batched_nms(boxes, scores, inds[:, 1], predictor.test_nms_thresh)
        if predictor.test_topk_per_image >= 0:
            keep = keep[: predictor.test_topk_per_image]
        return boxes[keep], scores[keep], inds[keep, 1]

    # -- mask head: mask_rcnn_inference + detector_postprocess's paste_masks_in_image (CPU) ------------------------
    def _mask_probs(self, feats, boxes: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        logits = self.mask_layers(self.mask_pooler([feats[f] for f in self.mask_in_features], boxes))
        if self.cls_agnostic_mask:
            return logits.sigmoid()
        return logits[torch.arange(logits.shape[0]), classes][:, None].sigmoid()

    def _paste(self, probs: torch.Tensor, boxes: torch.Tensor, h, w) -> torch.Tensor:
        """Each mask resampled into its box on the (H, W) image and thresholded. detectron2's CPU paste samples
        only the pixels from ``floor(x0) - 1`` to ``ceil(x1) + 1`` of each box (others stay 0); the same window is
        applied here, so a large box's bilinear fringe outside it is cut the same way."""
        x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)  # each (N, 1)
        ys = torch.arange(h, dtype=torch.float32, device=boxes.device)
        xs = torch.arange(w, dtype=torch.float32, device=boxes.device)
        gy = ((ys + 0.5) - y0) / (y1 - y0) * 2 - 1  # (N, H)
        gx = ((xs + 0.5) - x0) / (x1 - x0) * 2 - 1  # (N, W)
        n = boxes.shape[0]
        grid = torch.stack((gx[:, None, :].expand(n, h, w), gy[:, :, None].expand(n, h, w)), dim=3)
        pasted = F.grid_sample(probs, grid.to(probs.dtype), align_corners=False)[:, 0]
        in_x = (xs >= torch.clamp(x0.floor() - 1, min=0)) & (xs < torch.clamp(x1.ceil() + 1, max=w))  # (N, W)
        in_y = (ys >= torch.clamp(y0.floor() - 1, min=0)) & (ys < torch.clamp(y1.ceil() + 1, max=h))  # (N, H)
        return (pasted >= self.mask_threshold) & in_y[:, :, None] & in_x[:, None, :]

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        h, w = image.shape[-2:]
        feats = dict(zip(self.features.output_names, self.features(image)))
        proposals = self._proposals(feats, h, w)
        boxes, scores, classes = self._detect(feats, proposals, h, w)
        if self.mask_on:
            probs = self._mask_probs(feats, boxes, classes)
        keep = _nonempty(_clip(boxes, h, w))  # detector_postprocess (output size = input size: no rescale)
        boxes, scores, classes = _clip(boxes, h, w)[keep], scores[keep], classes[keep]
        if not self.mask_on:
            return boxes, scores, classes
        return boxes, scores, classes, self._paste(probs[keep], boxes, h, w)
