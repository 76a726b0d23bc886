"""Layer decay, activation checkpointing, drop path and the yacs registry entries."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from hieradet.config import add_hieradet_config
from hieradet.modeling import HieraDet
from hieradet.solver.lr_decay import layer_decay_rate, layer_id

TINY = dict(embed_dim=16, num_heads=1, stages=(1, 1, 3, 1), global_blocks=(4,), img_size=128)


def test_layer_ids_and_rates():
    n = 24
    assert layer_id("backbone.bottom_up.patch_embed.proj.weight", n) == 0
    assert layer_id("backbone.bottom_up.pos_embed.window_embed", n) == 0
    assert layer_id("backbone.bottom_up.blocks.0.attn.qkv.weight", n) == 1
    assert layer_id("backbone.bottom_up.blocks.23.mlp.fc2.bias", n) == 24
    assert layer_id("backbone.fpn_output2.weight", n) == 25
    assert layer_id("roi_heads.box_head.fc1.weight", n) == 25
    assert layer_decay_rate("backbone.bottom_up.blocks.23.mlp.fc2.bias", 0.85, n) == pytest.approx(0.85)
    assert layer_decay_rate("backbone.net.patch_embed.proj.weight", 0.85, n) == pytest.approx(0.85**25)
    assert layer_decay_rate("roi_heads.box_predictor.cls_score.weight", 0.85, n) == 1.0


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    ref = HieraDet(**TINY)
    ckpt = HieraDet(**TINY, use_act_checkpoint=True)
    ckpt.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 96, 128)
    for m in (ref, ckpt):
        sum(v.square().mean() for v in m(x).values()).backward()
    for (name, p), q in zip(ref.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_drop_path_is_stochastic_in_train_and_off_in_eval():
    torch.manual_seed(0)
    m = HieraDet(**TINY, drop_path_rate=0.5)
    x = torch.randn(4, 3, 64, 64)
    m.train()
    a, b = m(x)["scale5"], m(x)["scale5"]
    assert not torch.allclose(a, b)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x)["scale5"], m(x)["scale5"])
    rates = [float(getattr(blk.drop_path, "drop_prob", 0.0)) for blk in m.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.5) and rates == sorted(rates)


@pytest.mark.parametrize("name", ["build_hieradet_fpn_backbone", "build_hieradet_backbone", "build_vitdet_backbone"])
def test_yacs_builders(name):
    cfg = get_cfg()
    add_hieradet_config(cfg)
    cfg.MODEL.FPN.IN_FEATURES = ["scale2", "scale3", "scale4", "scale5"]
    cfg.MODEL.HIERADET.SIZE = "T"
    cfg.MODEL.HIERADET.IMG_SIZE = 256
    cfg.MODEL.VITDET.IMG_SIZE = 256
    if name == "build_vitdet_backbone":
        # keep the test light: ViT-B at 256 px
        cfg.MODEL.VITDET.SIZE = "B"
    backbone = BACKBONE_REGISTRY.get(name)(cfg, ShapeSpec(channels=3))
    backbone.eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 256, 256))
    expected = {"build_hieradet_backbone": {"scale2": 64, "scale5": 8}}.get(name, {"p2": 64, "p6": 4})
    for k, side in expected.items():
        assert out[k].shape[-2:] == (side, side)
    if name == "build_vitdet_backbone":
        assert backbone.padding_constraints["square_size"] == 256
        assert backbone.net.pos_embed.mode == "abswin"
        assert sorted({int(n.split(".")[2]) for n, _ in backbone.named_parameters() if "rel_pos" in n}) == [2, 5, 8, 11]


def test_yacs_rejects_unknown_size():
    cfg = get_cfg()
    add_hieradet_config(cfg)
    cfg.MODEL.HIERADET.SIZE = "XL"
    with pytest.raises(ValueError, match="unknown Hiera size 'XL'"):
        BACKBONE_REGISTRY.get("build_hieradet_backbone")(cfg, ShapeSpec(channels=3))


def test_yacs_fpn_names_features_the_backbone_lacks():
    cfg = get_cfg()
    add_hieradet_config(cfg)
    cfg.MODEL.HIERADET.SIZE = "T"
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]  # detectron2's ResNet names
    with pytest.raises(ValueError, match=r"asks for \['res2', 'res3', 'res4', 'res5'\], which HieraDet does not"):
        BACKBONE_REGISTRY.get("build_hieradet_fpn_backbone")(cfg, ShapeSpec(channels=3))
