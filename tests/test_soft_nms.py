import math

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.layers import ShapeSpec, batched_nms
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import CascadeROIHeads, FastRCNNConvFCHead, FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances
from torchvision.ops import nms

from hieradet.modeling.soft_nms import (
    SoftNMSCascadeROIHeads,
    SoftNMSFastRCNNOutputLayers,
    batched_soft_nms,
    fast_rcnn_inference_soft_nms,
    soft_nms,
    use_soft_nms,
)

# A: 10x10 box; B: its top half (IoU(A,B) = 0.5); D: its top 80% (IoU(A,D) = 0.8, IoU(B,D) = 50/80);
# C: far away (IoU 0 with everything).
A, B, D, C = [0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 8], [20, 20, 30, 30]


def test_linear_decay_hand_computed():
    boxes = torch.tensor([A, B, C], dtype=torch.float32)
    keep, scores = soft_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), "linear", iou_threshold=0.3)
    assert keep.tolist() == [0, 2, 1]  # B decays to 0.8 * (1 - 0.5) = 0.4, below C
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7, 0.4]))


def test_linear_decay_is_cumulative_and_thresholded():
    boxes = torch.tensor([A, B, D], dtype=torch.float32)
    keep, scores = soft_nms(boxes, torch.tensor([0.9, 0.8, 0.85]), "linear", iou_threshold=0.3)
    # after A: B = 0.8 * 0.5 = 0.4, D = 0.85 * 0.2 = 0.17; after B: D = 0.17 * (1 - 0.625)
    assert keep.tolist() == [0, 1, 2]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.4, 0.85 * 0.2 * 0.375]))
    # D ends at 0.06375 < 0.1: dropped
    keep, scores = soft_nms(boxes, torch.tensor([0.9, 0.8, 0.85]), "linear", iou_threshold=0.3, score_threshold=0.1)
    assert keep.tolist() == [0, 1]
    # below the IoU threshold linear soft-NMS leaves scores alone
    keep, scores = soft_nms(boxes, torch.tensor([0.9, 0.8, 0.85]), "linear", iou_threshold=0.9)
    assert keep.tolist() == [0, 2, 1]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.85, 0.8]))


def test_gaussian_decay_hand_computed():
    boxes = torch.tensor([A, B, D, C], dtype=torch.float32)
    keep, scores = soft_nms(boxes, torch.tensor([0.9, 0.8, 0.85, 0.3]), "gaussian", sigma=0.5)
    b = 0.8 * math.exp(-(0.5**2) / 0.5)
    d = 0.85 * math.exp(-(0.8**2) / 0.5) * math.exp(-(0.625**2) / 0.5)
    assert keep.tolist() == [0, 1, 3, 2]  # d = 0.108 falls below C's untouched 0.3
    torch.testing.assert_close(scores, torch.tensor([0.9, b, 0.3, d]))


def test_none_is_hard_nms():
    boxes = torch.tensor([A, B, D, C], dtype=torch.float32)
    keep, scores = soft_nms(boxes, torch.tensor([0.9, 0.8, 0.85, 0.3]), "none", iou_threshold=0.6)
    assert keep.tolist() == [0, 1, 3]  # D (IoU 0.8 with A) removed, B (IoU 0.5) kept
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.8, 0.3]))


def _random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 80
    wh = torch.rand(n, 2, generator=g) * 40 + 4
    return torch.cat([xy, xy + wh], dim=1), torch.rand(n, generator=g)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_none_matches_torchvision_nms_on_random_boxes(seed):
    boxes, scores = _random_boxes(200, seed)
    keep, kept_scores = soft_nms(boxes, scores, "none", iou_threshold=0.5, score_threshold=0.0)
    ref = nms(boxes, scores, 0.5)
    assert keep.tolist() == ref.tolist()
    torch.testing.assert_close(kept_scores, scores[ref])
    classes = torch.randint(0, 5, (200,), generator=torch.Generator().manual_seed(seed))
    keep, _ = batched_soft_nms(boxes, scores, classes, "none", iou_threshold=0.5, score_threshold=0.0)
    assert sorted(keep.tolist()) == sorted(batched_nms(boxes, scores, classes, 0.5).tolist())


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_scores_are_monotone_and_max_dets_is_a_prefix(method):
    boxes, scores = _random_boxes(150, 3)
    keep, kept = soft_nms(boxes, scores, method, iou_threshold=0.3)
    assert (kept[1:] <= kept[:-1]).all()
    assert (kept <= scores[keep] + 1e-7).all()  # scores only decay
    assert keep[0] == scores.argmax()
    # soft-NMS keeps more than hard NMS at the same threshold
    assert len(keep) > len(nms(boxes, scores, 0.3))
    keep10, kept10 = soft_nms(boxes, scores, method, iou_threshold=0.3, max_dets=10)
    assert keep10.tolist() == keep[:10].tolist()
    torch.testing.assert_close(kept10, kept[:10])


def test_batched_soft_nms_keeps_categories_apart():
    boxes = torch.tensor([A, A, B], dtype=torch.float32)
    keep, scores = batched_soft_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 0]), "linear")
    # the identical box of class 1 is untouched; B (class 0) decays by 1 - 0.5
    assert keep.tolist() == [0, 1, 2]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.8, 0.35]))


def test_bad_arguments_are_named():
    boxes = torch.tensor([A], dtype=torch.float32)
    with pytest.raises(ValueError, match="method must be one of"):
        soft_nms(boxes, torch.tensor([0.5]), "cubic")
    with pytest.raises(ValueError, match="sigma > 0"):
        soft_nms(boxes, torch.tensor([0.5]), "gaussian", sigma=0.0)
    with pytest.raises(ValueError, match=r"\(N, 4\) boxes"):
        soft_nms(torch.zeros(3, 5), torch.zeros(3))
    keep, scores = soft_nms(torch.zeros(0, 4), torch.zeros(0))
    assert keep.shape == (0,) and scores.shape == (0,)


def test_fast_rcnn_inference_soft_nms_filters_clips_and_labels():
    # two proposals, 2 classes, class-specific boxes; the second proposal's class-1 box overlaps the first
    boxes = torch.tensor([[0, 0, 10, 10, 0, 0, 10, 10], [0, 0, 10, 5, -5, 0, 10, 5]], dtype=torch.float32)
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.01, 0.8, 0.19]])
    (inst,), (rows,) = fast_rcnn_inference_soft_nms(
        [boxes], [probs], [(8, 8)], score_thresh=0.05, nms_thresh=0.3, topk_per_image=10, method="linear"
    )
    # candidates (score > 0.05): p0/c0 0.6, p0/c1 0.3, p1/c1 0.8 (p1/c0 0.01 filtered)
    # clipped to 8x8: p0 -> [0,0,8,8], p1/c1 -> [0,0,8,5]; IoU = 40/64 > 0.3 -> p0/c1 decays to 0.3 * 24/64
    assert inst.pred_classes.tolist() == [1, 0, 1]
    assert rows.tolist() == [1, 0, 0]
    torch.testing.assert_close(inst.scores, torch.tensor([0.8, 0.6, 0.3 * (1 - 40 / 64)]))
    torch.testing.assert_close(inst.pred_boxes.tensor[0], torch.tensor([0.0, 0.0, 8.0, 5.0]))


def _predictor(cls, **kw):
    torch.manual_seed(0)
    return cls(
        ShapeSpec(channels=16),
        box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)),
        num_classes=3,
        test_score_thresh=0.05,
        test_nms_thresh=0.5,
        test_topk_per_image=100,
        **kw,
    )


def _proposals(n, seed, size=(64, 64)):
    boxes, _ = _random_boxes(n, seed)
    inst = Instances(size)
    inst.proposal_boxes = Boxes(boxes * 0.6)
    return inst


def test_predictor_none_equals_detectron2_and_linear_differs():
    ref = _predictor(FastRCNNOutputLayers)
    ours = _predictor(SoftNMSFastRCNNOutputLayers, soft_nms_method="none")
    assert torch.equal(ref.cls_score.weight, ours.cls_score.weight)
    x = torch.randn(60, 16, generator=torch.Generator().manual_seed(1)) * 3
    props = [_proposals(30, 4), _proposals(30, 5)]
    with torch.no_grad():
        (r1, r2), _ = ref.inference(ref(x), props)
        (o1, o2), _ = ours.inference(ours(x), props)
    for r, o in ((r1, o1), (r2, o2)):
        assert torch.equal(r.pred_boxes.tensor, o.pred_boxes.tensor)
        assert torch.equal(r.scores, o.scores)
        assert torch.equal(r.pred_classes, o.pred_classes)
    ours.soft_nms_method = "linear"
    with torch.no_grad():
        (s1, _), _ = ours.inference(ours(x), props)
    # 30 proposals x 3 classes per image, all above the 0.05 score threshold: hard NMS removes overlaps, soft-NMS
    # keeps them with decayed scores; the top detection is the same
    assert len(r1) < len(s1) <= 100
    assert s1.scores[0] == r1.scores[0] and torch.equal(s1.pred_boxes.tensor[0], r1.pred_boxes.tensor[0])


def test_predictor_rejects_bad_method():
    with pytest.raises(ValueError, match="soft-NMS method"):
        _predictor(SoftNMSFastRCNNOutputLayers, soft_nms_method="soft")


def _cascade(heads_cls, method):
    torch.manual_seed(0)
    return instantiate(
        L(heads_cls)(
            num_classes=3,
            batch_size_per_image=64,
            positive_fraction=0.25,
            proposal_matchers=[L(Matcher)(thresholds=[t], labels=[0, 1]) for t in (0.5, 0.6, 0.7)],
            box_in_features=["p2"],
            box_pooler=L(ROIPooler)(output_size=7, scales=(1 / 4,), sampling_ratio=0, pooler_type="ROIAlignV2"),
            box_heads=[
                L(FastRCNNConvFCHead)(input_shape=ShapeSpec(channels=8, height=7, width=7), conv_dims=[], fc_dims=[32])
                for _ in range(3)
            ],
            box_predictors=[
                L(SoftNMSFastRCNNOutputLayers)(
                    input_shape=ShapeSpec(channels=32),
                    box2box_transform=L(Box2BoxTransform)(weights=(w, w, w / 2, w / 2)),
                    num_classes=3,
                    cls_agnostic_bbox_reg=True,
                    test_score_thresh=0.05,
                    test_topk_per_image=1000,
                    soft_nms_method=method,
                )
                for w in (10, 20, 30)
            ],
        )
    ).eval()


def test_cascade_soft_nms_heads():
    features = {"p2": torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(2))}
    props = [_proposals(40, 6)]
    ref = _cascade(CascadeROIHeads, "none")
    hard = _cascade(SoftNMSCascadeROIHeads, "none")
    soft = _cascade(SoftNMSCascadeROIHeads, "linear")
    with torch.no_grad():
        r, _ = ref(None, features, props)
        h, _ = hard(None, features, props)
        s, _ = soft(None, features, props)
    # with method "none" our heads reproduce detectron2's cascade inference exactly
    assert torch.equal(r[0].pred_boxes.tensor, h[0].pred_boxes.tensor)
    assert torch.equal(r[0].scores, h[0].scores)
    assert torch.equal(r[0].pred_classes, h[0].pred_classes)
    assert len(s[0]) > len(r[0]) and s[0].scores[0] == r[0].scores[0]


def test_use_soft_nms_on_model_zoo_configs():
    from detectron2.model_zoo import get_config

    mask = get_config("common/models/mask_rcnn_fpn.py").model
    use_soft_nms(mask, method="gaussian", sigma=0.7)
    assert mask.roi_heads.box_predictor._target_ is SoftNMSFastRCNNOutputLayers
    assert mask.roi_heads.box_predictor.soft_nms_method == "gaussian"
    assert mask.roi_heads.box_predictor.soft_nms_sigma == 0.7
    cascade = get_config("common/models/cascade_rcnn.py").model
    use_soft_nms(cascade)
    assert cascade.roi_heads._target_ is SoftNMSCascadeROIHeads
    assert all(p._target_ is SoftNMSFastRCNNOutputLayers for p in cascade.roi_heads.box_predictors)
    assert all(p.soft_nms_method == "linear" for p in cascade.roi_heads.box_predictors)
    heads = instantiate(cascade.roi_heads)
    assert isinstance(heads, SoftNMSCascadeROIHeads)
    assert all(isinstance(p, SoftNMSFastRCNNOutputLayers) for p in heads.box_predictor)
    with pytest.raises(ValueError, match="method must be one of"):
        use_soft_nms(mask, method="hard")
