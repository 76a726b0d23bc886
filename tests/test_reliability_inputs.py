"""Reliability: every backbone and a whole Mask R-CNN take any image size from 32 to 2048 px (odd, prime,
non-square, smaller than one attention window) and batches of mixed sizes, with finite outputs."""

import math

import pytest
import torch
from detectron2.config import instantiate
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from hieradet.modeling import HieraDet
from hieradet.modeling.hivit import HiViT
from hieradet.modeling.vit import ViT
from hieradet.testing import tiny_backbone_kwargs, tiny_mask_rcnn

BACKBONE_CLASSES = {"hieradet": HieraDet, "vit": ViT, "hivit": HiViT}

# (h, w): the minimum, odd, primes, non-square, smaller than the stage-3 window (14 tokens at stride 16 = 224 px),
# and extreme aspect ratios up to 2048.
SIZES = [(32, 32), (33, 47), (97, 31), (211, 37), (223, 160), (2048, 37), (41, 2048)]


def _backbone(kind, **kw):
    torch.manual_seed(0)
    return BACKBONE_CLASSES[kind](**tiny_backbone_kwargs(kind, **kw)).eval()


def _check_features(model, out, hw):
    assert set(out) == set(model.output_shape())
    for name, feat in out.items():
        stride = model.output_shape()[name].stride
        assert feat.shape[:2] == (1, model.output_shape()[name].channels), name
        # each side is the input side / stride, up to the rounding of the stem (ceil or floor)
        for side, got in zip(hw, feat.shape[-2:]):
            assert math.floor(side / stride) <= got <= math.ceil(side / stride), (name, hw, tuple(feat.shape))
        assert torch.isfinite(feat).all(), (name, hw)


@pytest.mark.parametrize("kind", list(BACKBONE_CLASSES))
@pytest.mark.parametrize("relpos,pos_embed", [("global", "abswin"), ("all", "interpolate")])
def test_backbones_take_any_size(kind, relpos, pos_embed):
    model = _backbone(kind, relpos=relpos, pos_embed=pos_embed)
    for hw in SIZES:
        with torch.no_grad():
            out = model(torch.randn(1, 3, *hw))
        _check_features(model, out, hw)


@pytest.mark.parametrize("kind", ["hieradet", "hivit"])
def test_windows_larger_than_the_map(kind):
    # stage-1 window of 8 tokens (32 px) is larger than a 20 px image's 5-token map: padded, not an error
    model = _backbone(kind)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 20, 29))
    for feat in out.values():
        assert torch.isfinite(feat).all()


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(BACKBONE_CLASSES))
def test_backbones_take_2048_square(kind):
    model = _backbone(kind, img_size=2048)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 2048, 2048))
    _check_features(model, out, (2048, 2048))


def test_backbone_gradients_are_finite_at_odd_sizes():
    model = _backbone("hieradet").train()
    x = torch.randn(2, 3, 67, 101, requires_grad=True)
    out = model(x)
    sum(v.square().mean() for v in out.values()).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n


def _inputs(sizes, num_classes=4, seed=0):
    """Images of the given sizes, each with two objects (boxes and masks), as a detectron2 mapper gives them."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for h, w in sizes:
        img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        boxes = torch.tensor([[1.0, 2.0, w * 0.6, h * 0.7], [w * 0.3, h * 0.25, w - 1.0, h - 1.0]])
        masks = torch.zeros(2, h, w, dtype=torch.bool)
        for k, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
            masks[k, y0:y1, x0:x1] = True
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.tensor([0, num_classes - 1])
        inst.gt_masks = BitMasks(masks)
        batch.append({"image": img, "instances": inst, "height": h, "width": w})
    return batch


MIXED = [(33, 47), (97, 31), (64, 223)]  # one batch: odd, prime and non-square sizes together


@pytest.mark.parametrize("kind", list(BACKBONE_CLASSES))
def test_mask_rcnn_trains_and_infers_on_mixed_size_batches(kind):
    torch.manual_seed(0)
    model = instantiate(tiny_mask_rcnn(kind, num_classes=4))
    model.train()
    with EventStorage(0):
        losses = model(_inputs(MIXED))
    assert {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)

    model.eval()
    # a lenient score threshold so that the untrained model returns detections to check
    model.roi_heads.box_predictor.test_score_thresh = 0.0
    with torch.no_grad():
        outputs = model([{k: v for k, v in d.items() if k != "instances"} for d in _inputs(MIXED + [(32, 32)])])
    for (h, w), out in zip(MIXED + [(32, 32)], outputs):
        inst = out["instances"]
        assert inst.image_size == (h, w)
        assert len(inst) > 0
        assert torch.isfinite(inst.pred_boxes.tensor).all() and torch.isfinite(inst.scores).all()
        boxes = inst.pred_boxes.tensor
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert inst.pred_masks.shape[-2:] == (h, w)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(BACKBONE_CLASSES))
def test_mask_rcnn_at_extreme_sizes(kind):
    torch.manual_seed(0)
    model = instantiate(tiny_mask_rcnn(kind, num_classes=4, img_size=1024))
    sizes = [(32, 1024), (1023, 37)]
    with EventStorage(0):
        losses = model.train()(_inputs(sizes))
    assert torch.isfinite(sum(losses.values()))
    with torch.no_grad():
        outputs = model.eval()([{"image": d["image"]} for d in _inputs(sizes + [(2048, 2048)])])
    assert [o["instances"].image_size for o in outputs] == sizes + [(2048, 2048)]
    for o in outputs:
        assert torch.isfinite(o["instances"].pred_boxes.tensor).all()
