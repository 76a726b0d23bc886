"""Turns a Mask R-CNN LazyConfig into Cascade Mask R-CNN, ViTDet style.

Three stages (IoU 0.5 / 0.6 / 0.7, box-regression weights (10, 5), (20, 10), (30, 15)), each with a
4-conv (LayerNorm) + 1-fc box head and a class-agnostic box predictor. The first stage's predictor
options (score threshold, detections per image, sigmoid CE, federated loss, ...) are copied from the
Mask R-CNN predictor, so converting an LVIS config keeps its LVIS settings.
"""

import copy

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import CascadeROIHeads, FastRCNNConvFCHead

from hieradet.modeling import ChannelLayerNorm

CASCADE_IOUS = (0.5, 0.6, 0.7)
CASCADE_BOX_WEIGHTS = ((10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15))


def make_cascade(model):
    """Replaces ``model.roi_heads`` (a StandardROIHeads LazyConfig) in place by CascadeROIHeads."""
    roi_heads = model.roi_heads
    if "box_predictor" not in roi_heads:
        raise ValueError("make_cascade expects a Mask R-CNN config (roi_heads.box_predictor); is it already cascade?")
    predictor = roi_heads.pop("box_predictor")
    roi_heads.pop("box_head")
    roi_heads.pop("proposal_matcher")
    predictors = []
    for weights in CASCADE_BOX_WEIGHTS:
        p = copy.deepcopy(predictor)
        p.box2box_transform = L(Box2BoxTransform)(weights=weights)
        p.cls_agnostic_bbox_reg = True
        p.num_classes = "${...num_classes}"
        predictors.append(p)
    roi_heads.update(
        _target_=CascadeROIHeads,
        box_heads=[
            L(FastRCNNConvFCHead)(
                input_shape=ShapeSpec(channels=256, height=7, width=7),
                conv_dims=[256, 256, 256, 256],
                fc_dims=[1024],
                conv_norm=ChannelLayerNorm,
            )
            for _ in CASCADE_IOUS
        ],
        box_predictors=predictors,
        proposal_matchers=[
            L(Matcher)(thresholds=[iou], labels=[0, 1], allow_low_quality_matches=False) for iou in CASCADE_IOUS
        ],
    )
    return model
