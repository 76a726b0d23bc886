"""Multi-scale + flip test-time augmentation (TTA) for LazyConfig Mask / Cascade R-CNN models.

detectron2's ``GeneralizedRCNNWithTTA`` reads its settings from a yacs ``CfgNode``. :class:`GeneralizedRCNNTTA`
reuses its machinery (augmented inputs, batching, box union, mask averaging) but takes plain keyword
arguments and reads the NMS settings from the wrapped model's box predictor, so it can be built with
``LazyCall``::

    from hieradet.modeling.tta import GeneralizedRCNNTTA
    from ..cascade_mask_rcnn_hieradet_b_100ep import model  # a GeneralizedRCNN config

    model = L(GeneralizedRCNNTTA)(model=model, min_sizes=[1024, 1280, 1536], max_size=2048, flip=True)

In training mode the wrapper is transparent (it calls the wrapped model). It loads checkpoints of the
bare model (keys without the ``model.`` prefix), so the weights of a trained model can be evaluated
with TTA by pointing ``train.init_checkpoint`` at them.

Detections of all augmentations are merged with the wrapped model's own suppression: hard NMS at
``test_nms_thresh`` or, for a :class:`~hieradet.modeling.soft_nms.SoftNMSFastRCNNOutputLayers`
predictor, soft-NMS with its method. Square padding (``square_pad``) of the backbone is raised while
TTA runs when an augmented image is larger than the padded square (detectron2 would crop it).
"""

import contextlib
from typing import List, Optional, Sequence

import torch
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image
from detectron2.modeling.test_time_augmentation import DatasetMapperTTA, GeneralizedRCNNWithTTA
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .soft_nms import SOFT_NMS_METHODS, fast_rcnn_inference_soft_nms

__all__ = ["GeneralizedRCNNTTA"]


class GeneralizedRCNNTTA(GeneralizedRCNNWithTTA):
    """A ``GeneralizedRCNN`` evaluated with multi-scale and horizontal-flip test-time augmentation.

    Args:
        model (GeneralizedRCNN): the detector (standard or cascade ROI heads, optionally with masks).
        min_sizes (list[int]): short-edge sizes of the augmented images.
        max_size (int): cap on the long edge of the augmented images.
        flip (bool): also run every size horizontally flipped.
        batch_size (int): augmented images per forward pass.
        merge_method (str or None): how detections of all augmentations are merged: ``"none"`` (hard
            NMS), ``"linear"`` or ``"gaussian"`` soft-NMS; ``None`` (default) uses the model's own.
    """

    def __init__(
        self,
        model: GeneralizedRCNN,
        min_sizes: Sequence[int] = (800,),
        max_size: int = 1333,
        flip: bool = True,
        batch_size: int = 3,
        merge_method: Optional[str] = None,
    ):
        nn.Module.__init__(self)  # the parent's __init__ wants a yacs config; everything it sets is set here
        if isinstance(model, DistributedDataParallel):
            model = model.module
        if not isinstance(model, GeneralizedRCNN):
            raise TypeError(f"GeneralizedRCNNTTA wraps a detectron2 GeneralizedRCNN, got {type(model).__name__}")
        if model.proposal_generator is None:
            raise ValueError("GeneralizedRCNNTTA does not support models with pre-computed proposals")
        if getattr(model.roi_heads, "keypoint_on", False):
            raise ValueError("GeneralizedRCNNTTA does not support keypoint heads")
        min_sizes = [int(s) for s in min_sizes]
        if not min_sizes or min(min_sizes) <= 0:
            raise ValueError(f"min_sizes must be a non-empty list of positive sizes, got {min_sizes}")
        if max_size < max(min_sizes):
            raise ValueError(f"max_size={max_size} is smaller than the largest of min_sizes {min_sizes}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if merge_method is not None and merge_method not in SOFT_NMS_METHODS:
            raise ValueError(f"merge_method must be None or one of {SOFT_NMS_METHODS}, got {merge_method!r}")
        self.model = model
        self.tta_mapper = DatasetMapperTTA(min_sizes=min_sizes, max_size=int(max_size), flip=bool(flip))
        self.batch_size = int(batch_size)
        self.merge_method = merge_method
        self._register_load_state_dict_pre_hook(_add_model_prefix)

    @property
    def _predictor(self):
        pred = self.model.roi_heads.box_predictor
        return pred[-1] if isinstance(pred, nn.ModuleList) else pred

    def __call__(self, batched_inputs: List[dict]):
        """Training mode: the wrapped model's losses. Eval mode: TTA detections, one dict per input
        (same format as ``GeneralizedRCNN.forward``)."""
        if self.training:
            return self.model(batched_inputs)
        return super().__call__(batched_inputs)

    forward = __call__

    @contextlib.contextmanager
    def _square_pad_at_least(self, size: int):
        backbone = self.model.backbone
        attrs = [a for a in ("_square_pad", "square_pad") if getattr(backbone, a, 0)]
        old = {a: getattr(backbone, a) for a in attrs}
        try:
            for a in attrs:
                if size > old[a]:
                    setattr(backbone, a, size)
            yield
        finally:
            for a, v in old.items():
                setattr(backbone, a, v)

    def _inference_one_image(self, input: dict) -> dict:
        orig_shape = (input["height"], input["width"])
        augmented_inputs, tfms = self._get_augmented_inputs(input)
        div = max(int(self.model.backbone.size_divisibility), 1)
        largest = max(max(x["image"].shape[-2:]) for x in augmented_inputs)
        with self._square_pad_at_least(-(-largest // div) * div):
            # boxes first, without masks, from every augmentation
            with self._turn_off_roi_heads(["mask_on", "keypoint_on"]):
                all_boxes, all_scores, all_classes = self._get_augmented_boxes(augmented_inputs, tfms)
            merged = self._merge_detections(all_boxes, all_scores, all_classes, orig_shape)
            if not getattr(self.model.roi_heads, "mask_on", False):
                return {"instances": merged}
            # masks of the merged boxes, predicted in every augmentation and averaged
            aug_instances = self._rescale_detected_boxes(augmented_inputs, merged, tfms)
            outputs = self._batch_inference(augmented_inputs, aug_instances)
        del augmented_inputs, aug_instances
        merged.pred_masks = self._reduce_pred_masks(outputs, tfms)
        return {"instances": detector_postprocess(merged, *orig_shape)}

    def _merge_detections(self, all_boxes, all_scores, all_classes, shape_hw):
        pred = self._predictor
        num_classes = self.model.roi_heads.num_classes
        probs = torch.zeros(len(all_boxes), num_classes + 1, device=all_boxes.device)
        if len(all_boxes):
            rows = torch.arange(len(all_boxes), device=all_boxes.device)
            probs[rows, torch.stack(list(all_classes))] = torch.stack(list(all_scores)).to(probs.dtype)
        method = self.merge_method or getattr(pred, "soft_nms_method", "none")
        if method == "none":
            merged, _ = fast_rcnn_inference_single_image(
                all_boxes, probs, shape_hw, 1e-8, pred.test_nms_thresh, pred.test_topk_per_image
            )
            return merged
        (merged,), _ = fast_rcnn_inference_soft_nms(
            [all_boxes],
            [probs],
            [shape_hw],
            1e-8,
            pred.test_nms_thresh,
            pred.test_topk_per_image,
            method,
            getattr(pred, "soft_nms_sigma", 0.5),
            getattr(pred, "soft_nms_score_threshold", 0.001),
        )
        return merged


def _add_model_prefix(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """Lets the wrapper load a bare model's state dict (keys without ``model.``)."""
    inner = prefix + "model."
    if any(k.startswith(inner) for k in state_dict):
        return
    for k in [k for k in state_dict if k.startswith(prefix)]:
        state_dict[inner + k[len(prefix) :]] = state_dict.pop(k)
