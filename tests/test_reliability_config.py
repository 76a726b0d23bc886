"""Reliability: invalid configuration values fail at construction with a message naming the value and why;
images incompatible with a fixed-size option fail with a clear message instead of being silently cropped."""

import pytest
import torch
from detectron2.config import instantiate

from hieradet.engine.guards import check_square_size, install_input_guard
from hieradet.modeling import HieraDet
from hieradet.modeling.hivit import HiViT
from hieradet.modeling.vit import ViT
from hieradet.testing import tiny_backbone_kwargs, tiny_mask_rcnn

CLASSES = {"hieradet": HieraDet, "vit": ViT, "hivit": HiViT}


def _build(kind, **kw):
    return CLASSES[kind](**tiny_backbone_kwargs(kind, **kw))


@pytest.mark.parametrize(
    "kind,kw,match",
    [
        # tiny HieraDet has 5 blocks, tiny ViT 2, tiny HiViT a 2-block main stage
        ("hieradet", dict(global_blocks=(1, 5)), r"global_blocks \[5\] out of range: this Hiera has 5 blocks \(0-4\)"),
        ("hieradet", dict(global_blocks=(-1,)), r"global_blocks \[-1\] out of range"),
        ("vit", dict(global_blocks=(2,)), r"global_blocks \[2\] out of range: this ViT has 2 blocks \(0-1\)"),
        ("hivit", dict(global_blocks=(7,)), r"global_blocks \[7\] out of range: this HiViT's main stage has 2 blocks"),
        ("hieradet", dict(window_size=(8, -4, 14, 7)), r"window_size entries must be >= 0 .*\(8, -4, 14, 7\)"),
        ("hieradet", dict(window_size=(8, 4, 14)), r"window_size \(8, 4, 14\) needs one entry per stage \(4 stages\)"),
        ("hieradet", dict(window_size=(7, 4, 14, 7)), r"window_size=7 must be a multiple of q_stride=2"),
        ("vit", dict(window_size=-1), r"window_size must be >= 0 .*got -1"),
        ("hivit", dict(window_size=-3), r"window_size must be >= 0 .*got -3"),
        (
            "hieradet",
            dict(relpos="global_only"),
            r"relpos must be one of \('global', 'all', 'none'\), got 'global_only'",
        ),
        ("vit", dict(relpos="yes"), r"relpos must be one of .* got 'yes'"),
        ("hivit", dict(relpos=True), r"relpos must be one of .* got True"),
        ("hieradet", dict(pos_embed="tile"), r"pos_embed mode must be one of .* got 'tile'"),
        ("vit", dict(pos_embed="bicubic"), r"pos_embed mode must be one of .* got 'bicubic'"),
        ("hieradet", dict(pos_embed_window=0, pos_embed_global=None), r"window_size must be positive, got \(0, 0\)"),
        (
            "hieradet",
            dict(pos_embed_window=None, pos_embed_global=None),
            r"needs a window_size, a global_size, or both",
        ),
        ("hieradet", dict(pretrain_img_size=0), r"pretrain_size must be positive"),
        ("hieradet", dict(num_heads=3), r"dim_out=16 is not divisible by num_heads=3"),
        ("vit", dict(num_heads=5), r"dim_out=32 is not divisible by num_heads=5"),
        ("hieradet", dict(out_features=("res5",)), r"unknown out_features \['res5'\]"),
        ("hieradet", dict(q_pool=4), r"q_pool=4 must be in \[0, 3\]"),
        ("hivit", dict(depths=(1, 1)), r"depths must be 3 positive block counts"),
        ("hivit", dict(embed_dim=30), r"embed_dim=30 must be divisible by 4"),
    ],
)
def test_invalid_values_fail_at_construction(kind, kw, match):
    with pytest.raises(ValueError, match=match):
        _build(kind, **kw)


def test_window_size_zero_means_global_attention():
    # 0 is not an error: it is the documented "global attention" value
    model = _build("hieradet", window_size=(8, 4, 0, 7))
    assert [blk.window_size for blk in model.blocks] == [
        8,
        8,
        4,
        0,
        0,
    ]  # windows lag one block; block 3 is global anyway


# Still accepted silently by the backbones (owned by the lead); these tests state the wanted behaviour.
_LEAD = "backbone constructor does not validate this value yet (see engineer G's report)"


@pytest.mark.parametrize("kind", list(CLASSES))
@pytest.mark.parametrize("img_size", [0, -5])
def test_non_positive_img_size_is_named(kind, img_size):
    # today: "RuntimeError: zeros: Dimension size must be non-negative." from deep inside the relpos tables
    with pytest.raises(ValueError, match=rf"img_size.*{img_size}"):
        _build(kind, img_size=img_size)


def test_empty_stage_is_rejected():
    # today: builds, but stage ends collide (0, 0, 2, 3) and scale3 is taken from stage 1's block
    with pytest.raises(ValueError, match=r"stages"):
        _build("hieradet", stages=(1, 0, 2, 1))


@pytest.mark.parametrize("kind,square_pad,divisor", [("hieradet", 1000, 32), ("vit", 1000, 16), ("hivit", 1000, 32)])
def test_square_pad_must_fit_the_stride(kind, square_pad, divisor):
    # today: accepted, and detectron2 silently pads to the next multiple (1024) instead of the fixed 1000
    with pytest.raises(ValueError, match=rf"square_pad={square_pad}.*{divisor}"):
        _build(kind, square_pad=square_pad)


def test_detectron2_silently_crops_images_larger_than_square_pad():
    """The failure the input guard exists for: with square_pad, a larger image is cropped, not padded."""
    cfg = tiny_mask_rcnn("vit", img_size=64)
    cfg.backbone.square_pad = 64
    model = instantiate(cfg).eval()
    images = model.preprocess_image([{"image": torch.zeros(3, 100, 150, dtype=torch.uint8)}])
    assert tuple(images.tensor.shape[-2:]) == (64, 64) and images.image_sizes == [(100, 150)]


def test_input_guard_rejects_images_larger_than_square_pad():
    cfg = tiny_mask_rcnn("vit", img_size=64)
    cfg.backbone.square_pad = 64
    model = instantiate(cfg).eval()
    install_input_guard(model)
    with torch.no_grad():
        out = model([{"image": torch.zeros(3, 64, 40, dtype=torch.uint8)}])  # fits: fine
        assert out[0]["instances"].image_size == (64, 40)
        with pytest.raises(ValueError, match=r"image 1 of the batch \(b.jpg\) is 100x150 .*square_pad=64"):
            model(
                [
                    {"image": torch.zeros(3, 64, 40, dtype=torch.uint8)},
                    {"image": torch.zeros(3, 100, 150), "file_name": "b.jpg"},
                ]
            )
    check_square_size([{"image": torch.zeros(3, 100, 150)}], 0)  # 0: no fixed size, nothing to check
