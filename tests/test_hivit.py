"""HiViT backbone: shapes, presets, parameter counts, the abs-win invariant, layer decay, yacs builder."""

import math
from functools import partial

import pytest
import torch

from hieradet.config import add_hivit_config
from hieradet.modeling.hivit import (
    HIVIT_SIZES,
    HiViT,
    PatchMerge,
    default_hivit_global_blocks,
    hivit_kwargs,
)
from hieradet.modeling.layout_record import strip_layout_records
from hieradet.solver.lr_decay import layer_decay_rate

# Zhang et al. 2023 (HiViT), Tab. 7: parameters in millions at 224 px, whole classification models.
PAPER_PARAMS_M = {"T": 19.2, "S": 37.5, "B": 66.4, "L": 266.8}


def _tiny(**kw):
    args = dict(embed_dim=64, depths=(1, 1, 4), num_heads=2, img_size=448, global_blocks=(1, 3))
    args.update(kw)
    return HiViT(**args)


def _expected_hw(hw):
    s4 = (hw[0] // 4, hw[1] // 4)  # stride-4 convolution, no padding
    s8 = (math.ceil(s4[0] / 2), math.ceil(s4[1] / 2))  # merges pad odd maps
    s16 = (math.ceil(s8[0] / 2), math.ceil(s8[1] / 2))
    s32 = (math.ceil(s16[0] / 2), math.ceil(s16[1] / 2))  # ceil-mode max pool
    return {"scale2": s4, "scale3": s8, "scale4": s16, "scale5": s32}


@pytest.mark.parametrize("hw", [(333, 517), (224, 224), (100, 60), (37, 45)])
def test_shapes_strides_channels_at_odd_sizes(hw):
    model = _tiny().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *hw))
    expected = _expected_hw(hw)
    channels = {"scale2": 16, "scale3": 32, "scale4": 64, "scale5": 64}
    strides = {"scale2": 4, "scale3": 8, "scale4": 16, "scale5": 32}
    assert list(out) == ["scale2", "scale3", "scale4", "scale5"]
    for name, y in out.items():
        assert y.shape == (2, channels[name], *expected[name]), name
        assert torch.isfinite(y).all()
        assert model.output_shape()[name].channels == channels[name]
        assert model.output_shape()[name].stride == strides[name]
    assert model.padding_constraints == {"size_divisibility": 32, "square_size": 0}


def test_stride32_is_a_max_pool_of_stride16():
    model = _tiny(out_norm=False).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 288))
    torch.testing.assert_close(out["scale5"], torch.nn.functional.max_pool2d(out["scale4"], 2), rtol=0, atol=0)


def test_out_features_subset():
    model = _tiny(out_features=("scale4",)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert list(out) == ["scale4"] and list(model.output_shape()) == ["scale4"]
    assert model.padding_constraints["size_divisibility"] == 16


def test_patch_merge_order_and_odd_padding():
    merge = PatchMerge(1)
    merge.norm = torch.nn.Identity()  # look at the raw concatenation through an identity reduction
    merge.reduction = torch.nn.Identity()
    x = torch.arange(9.0).reshape(1, 3, 3, 1)  # rows 0-2, columns 0-2
    y = merge(x)
    assert y.shape == (1, 2, 2, 4)
    # cell (0, 0): top-left 0, bottom-left 3, top-right 1, bottom-right 4
    assert y[0, 0, 0].tolist() == [0.0, 3.0, 1.0, 4.0]
    # cell (1, 1): only the top-left token (8) is real, the rest is zero padding
    assert y[0, 1, 1].tolist() == [8.0, 0.0, 0.0, 0.0]


def test_stem_and_main_stage_structure():
    model = HiViT(**hivit_kwargs("T", img_size=1024))
    pe = model.patch_embed
    # Tab. 7 "1-1-10": one stem block = two MLP blocks; widths C/4, C/2, C
    assert len(pe.stage1) == 2 and len(pe.stage2) == 2 and len(model.blocks) == 10
    assert pe.proj.kernel_size == (4, 4) and pe.proj.stride == (4, 4)
    assert pe.stage1[0].mlp.fc1.weight.shape == (3 * 96, 96)  # stem MLP ratio 3
    assert pe.merge1.reduction.weight.shape == (192, 4 * 96) and pe.merge1.reduction.bias is None
    assert pe.merge2.reduction.weight.shape == (384, 4 * 192)
    assert not any(hasattr(b, "attn") for b in list(pe.stage1) + list(pe.stage2))
    assert model.blocks[0].attn.num_heads == 6 and model.blocks[0].mlp.fc1.weight.shape == (4 * 384, 384)


def test_default_global_blocks():
    assert default_hivit_global_blocks(20) == (4, 9, 14, 19)  # the HiViT authors' detection config (B)
    assert default_hivit_global_blocks(10) == (2, 4, 7, 9)
    assert default_hivit_global_blocks(36) == (8, 17, 26, 35)
    assert default_hivit_global_blocks(24) == (5, 11, 17, 23)  # = ViTDet-L's
    assert hivit_kwargs("B")["global_blocks"] == (4, 9, 14, 19)
    with pytest.raises(ValueError, match="num_global"):
        default_hivit_global_blocks(3, num_global=4)


def test_windows_and_relpos_only_on_global_blocks():
    model = _tiny()
    assert [b.window_size for b in model.blocks] == [14, 0, 14, 0]
    relpos = sorted({int(n.split(".")[1]) for n, _ in model.named_parameters() if "rel_pos" in n})
    assert relpos == [1, 3]
    assert model.blocks[1].attn.rel_pos_h.shape == (2 * 448 // 16 - 1, 32)  # whole 28x28 map at 448 px
    assert not model.blocks[1].attn.rel_pos_h.detach().any()  # zero init: a no-op until trained
    assert sum("rel_pos" in n for n, _ in _tiny(relpos="none").named_parameters()) == 0
    all_model = _tiny(relpos="all")
    assert all(b.attn.use_rel_pos for b in all_model.blocks)
    assert all_model.blocks[0].attn.rel_pos_h.shape == (27, 32)  # windowed block: 14x14 window


def test_abswin_embedding_tiles_the_pretrained_grid():
    model = _tiny()
    grid = model.pos_embed.window_embed[0].permute(1, 2, 0)
    assert grid.shape == (14, 14, 64)
    e = model.pos_embed((64, 64))[0]  # 1024 px
    for y in range(0, 64 - 13, 14):
        for x in range(0, 64 - 13, 14):
            assert torch.equal(e[y : y + 14, x : x + 14], grid)
    bugged = _tiny(pos_embed="interpolate")
    bugged.load_state_dict(strip_layout_records(model.state_dict()))  # another mode on purpose
    assert not torch.allclose(bugged.pos_embed((64, 64))[0, :14, :14], grid, atol=1e-3)


@pytest.mark.parametrize("pos_embed,invariant", [("abswin", True), ("interpolate", False)])
def test_each_224px_window_computes_what_the_pretrained_model_computes(pos_embed, invariant):
    """The abs-win invariant end to end: HiViT's stem never mixes 16 px patches and its main stage attends in
    14x14 windows (224 px), so on a 448 px image made of four 224 px images, abs-win gives every quadrant exactly
    the features of the model at its 224 px pretraining size; the interpolated embedding does not."""
    torch.manual_seed(0)
    model = _tiny(global_blocks=(), pos_embed=pos_embed).eval()
    tiles = torch.randn(4, 3, 224, 224)
    big = torch.cat([torch.cat([tiles[0], tiles[1]], dim=2), torch.cat([tiles[2], tiles[3]], dim=2)], dim=1)
    with torch.no_grad():
        ref = model(tiles)
        out = model(big[None])
    for name, side in (("scale2", 56), ("scale3", 28), ("scale4", 14), ("scale5", 7)):
        y = out[name][0]
        quads = [y[:, :side, :side], y[:, :side, side:], y[:, side:, :side], y[:, side:, side:]]
        same = all(torch.allclose(q, r, atol=1e-5, rtol=0) for q, r in zip(quads, ref[name]))
        if name in ("scale2", "scale3"):
            assert same, name  # the stem has no position embedding: equal in both modes
        else:
            assert same == invariant, name


def _classifier_params(size: str) -> int:
    c = HIVIT_SIZES[size]["embed_dim"]
    return 2 * c + c * 1000 + 1000  # fc_norm + 1000-way linear head


def _official_rel_pos_bias_params(size: str) -> int:
    cfg = HIVIT_SIZES[size]
    return (2 * 14 - 1) ** 2 * cfg["num_heads"] * cfg["depths"][2]  # (2S-1)^2 x heads per main block, S = 14


@pytest.mark.parametrize("size", ["T", "S", "B", "L"])
def test_param_counts_match_paper(size):
    """Backbone configured as the classification model (224 px, 14x14 absolute embedding, no output norms, no
    decomposed relpos), classifier excluded.

    Tab. 7's figures are whole classifiers with the official Swin-style relative position *bias* tables
    ((2*14-1)^2 x heads per main block), rounded to 0.1M. We compare our count with the paper's figure minus the
    classifier and minus those tables (which the converter drops, see hieradet/checkpoint/keymaps.py), allowing
    0.05M (half the paper's rounding step).
    """
    with torch.device("meta"):
        model = HiViT(**hivit_kwargs(size, img_size=224, relpos="none", out_norm=False))
    n = sum(p.numel() for p in model.parameters())
    target = PAPER_PARAMS_M[size] * 1e6 - _classifier_params(size) - _official_rel_pos_bias_params(size)
    assert abs(n - target) <= 0.05e6, (size, n, target)


def test_layer_decay_groups():
    model = _tiny()
    rate = partial(layer_decay_rate, lr_decay_rate=0.9, num_blocks=model.num_blocks)
    names = ["backbone.bottom_up." + n for n, _ in model.named_parameters()]
    by_name = {n: rate(n) for n in names}
    top = 1.0
    bottom = 0.9 ** (model.num_blocks + 1)
    # the whole hierarchical patch embedding (stem MLPs and merges) and the position embedding are layer 0
    for n, r in by_name.items():
        if ".patch_embed." in n or ".pos_embed." in n:
            assert r == pytest.approx(bottom), n
    assert by_name["backbone.bottom_up.patch_embed.merge2.reduction.weight"] == pytest.approx(bottom)
    for i in range(model.num_blocks):
        assert by_name[f"backbone.bottom_up.blocks.{i}.attn.qkv.weight"] == pytest.approx(0.9 ** (model.num_blocks - i))
    assert by_name["backbone.bottom_up.out_norms.scale2.weight"] == pytest.approx(top)
    assert rate("roi_heads.box_predictor.cls_score.weight") == pytest.approx(top)


def test_invalid_config_messages():
    with pytest.raises(ValueError, match=r"global_blocks \[4\] out of range"):
        _tiny(global_blocks=(4,))
    with pytest.raises(ValueError, match="depths must be 3"):
        _tiny(depths=(2, 20))
    with pytest.raises(ValueError, match="divisible by 4"):
        _tiny(embed_dim=66)
    with pytest.raises(ValueError, match="window_size"):
        _tiny(window_size=-2)
    with pytest.raises(ValueError, match="relpos"):
        _tiny(relpos="local")
    with pytest.raises(ValueError, match="pos_embed mode"):
        _tiny(pos_embed="tiled")
    with pytest.raises(ValueError, match="out_features"):
        _tiny(out_features=("scale6",))
    with pytest.raises(ValueError, match="unknown HiViT size"):
        hivit_kwargs("H")
    with pytest.raises(ValueError, match="num_heads"):
        _tiny(num_heads=3)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        _tiny()(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="smaller than"):
        _tiny()(torch.randn(1, 3, 2, 64))


def test_yacs_builder_makes_a_working_mask_rcnn():
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    add_hivit_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.BACKBONE.NAME = "build_hivit_fpn_backbone"
    cfg.MODEL.HIVIT.SIZE = "T"
    cfg.MODEL.HIVIT.IMG_SIZE = 256
    cfg.MODEL.FPN.IN_FEATURES = ["scale2", "scale3", "scale4", "scale5"]
    model = build_model(cfg).eval()
    bottom_up = model.backbone.bottom_up
    assert isinstance(bottom_up, HiViT) and bottom_up.global_blocks == (2, 4, 7, 9)
    assert [b.window_size for b in bottom_up.blocks].count(0) == 4
    assert model.backbone.size_divisibility == 32
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8), "height": 96, "width": 128}])
    assert out[0]["instances"].image_size == (96, 128)

    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    with pytest.raises(ValueError, match="HiViT does not output"):
        build_model(cfg)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = _tiny(drop_path_rate=0.0)
    ckpt = _tiny(drop_path_rate=0.0, use_act_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 96, 64)
    grads = []
    for model in (plain, ckpt):
        model.train()
        sum(y.square().mean() for y in model(x).values()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "patch_embed.stage1.0.mlp.fc1.weight" in grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("size", ["B", "L"])
def test_full_size_at_1024(size):
    model = HiViT(**hivit_kwargs(size, img_size=1024)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 1024, 1024))
    c = HIVIT_SIZES[size]["embed_dim"]
    assert [tuple(v.shape) for v in out.values()] == [
        (1, c // 4, 256, 256),
        (1, c // 2, 128, 128),
        (1, c, 64, 64),
        (1, c, 32, 32),
    ]
    assert all(torch.isfinite(v).all() for v in out.values())
