"""yacs and LazyConfig give the same per-size recipe: drop path, layer decay, lr and parameter groups.

The yacs side is ``add_hieradet_config`` + the registry builders + ``build_recipe_optimizer`` with every recipe key
left at ``-1`` (the size's default); the LazyConfig side is the size's COCO config in ``configs/COCO``.
"""

import re
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from hieradet.config import add_hieradet_config, build_recipe_optimizer, recipe_from_cfg
from hieradet.testing import make_tiny

ROOT = Path(__file__).resolve().parents[1]
HIERADET = {
    "T": "mask_rcnn_hieradet_t_100ep",
    "S": "mask_rcnn_hieradet_s_100ep",
    "B": "mask_rcnn_hieradet_b_100ep",
    "B+": "mask_rcnn_hieradet_bplus_100ep",
    "L": "mask_rcnn_hieradet_l_100ep",
    "H": "mask_rcnn_hieradet_h_75ep",
}
VITDET = {"B": "mask_rcnn_vitdet_b_100ep", "L": "mask_rcnn_vitdet_l_100ep", "H": "mask_rcnn_vitdet_h_75ep"}
CASES = [("hieradet", s, n) for s, n in HIERADET.items()] + [("vitdet", s, n) for s, n in VITDET.items()]
BUILDER = {"hieradet": "build_hieradet_fpn_backbone", "vitdet": "build_vitdet_backbone"}


def _yacs(family, size):
    cfg = get_cfg()
    add_hieradet_config(cfg)
    cfg.MODEL.BACKBONE.NAME = BUILDER[family]
    cfg.MODEL.FPN.IN_FEATURES = ["scale2", "scale3", "scale4", "scale5"]
    (cfg.MODEL.HIERADET if family == "hieradet" else cfg.MODEL.VITDET).SIZE = size
    return cfg


def _lazy(name):
    return LazyConfig.load(str(ROOT / "configs" / "COCO" / f"{name}.py"))


def _bb(cfg):
    return cfg.model.backbone.bottom_up if "bottom_up" in cfg.model.backbone else cfg.model.backbone.net


def test_yacs_defaults_are_the_sizes_default():
    cfg = get_cfg()
    add_hieradet_config(cfg)
    for c in (cfg.MODEL.HIERADET, cfg.MODEL.VITDET):
        assert c.DROP_PATH_RATE == c.LR_DECAY_RATE == c.BASE_LR == -1.0
        assert c.PRETRAIN_IMG_SIZE == 224
    assert cfg.MODEL.HIERADET.POS_EMBED_ANTIALIAS is False


@pytest.mark.parametrize("family,size,name", CASES)
def test_yacs_and_lazyconfig_give_the_same_recipe(family, size, name):
    lazy = _lazy(name)
    recipe = recipe_from_cfg(_yacs(family, size))
    assert recipe["drop_path_rate"] == pytest.approx(_bb(lazy).drop_path_rate)
    assert recipe["lr_decay_rate"] == pytest.approx(lazy.optimizer.params.lr_decay_rate)
    assert recipe["lr"] == pytest.approx(lazy.optimizer.lr)
    assert recipe["weight_decay"] == pytest.approx(lazy.optimizer.weight_decay)


def test_yacs_overrides_replace_the_sizes_default():
    cfg = _yacs("hieradet", "L")
    cfg.MODEL.HIERADET.DROP_PATH_RATE = 0.0
    cfg.MODEL.HIERADET.LR_DECAY_RATE = 1.0
    cfg.MODEL.HIERADET.BASE_LR = 3e-4
    assert recipe_from_cfg(cfg) == dict(lr=3e-4, drop_path_rate=0.0, lr_decay_rate=1.0, weight_decay=0.1)


@pytest.mark.parametrize("family,size,name", CASES)
def test_yacs_optimizer_equals_the_lazyconfig_optimizer_per_parameter(family, size, name):
    lazy = make_tiny(_lazy(name), image_size=64, num_classes=3)
    model = instantiate(lazy.model)
    lazy.optimizer.params.model = model

    def hyper(opt):
        by_id = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
        return {n: by_id[id(p)] for n, p in model.named_parameters()}

    ours, theirs = hyper(build_recipe_optimizer(_yacs(family, size), model)), hyper(instantiate(lazy.optimizer))
    assert ours.keys() == theirs.keys()
    assert {n: v for n, v in ours.items() if v != pytest.approx(theirs[n])} == {}
    assert len({v for v in ours.values()}) > 3  # layer decay and weight-decay groups really differ


@pytest.mark.parametrize("family,size,name", [("hieradet", "T", HIERADET["T"]), ("vitdet", "B", VITDET["B"])])
def test_yacs_and_lazyconfig_build_the_same_drop_path_and_embedding(family, size, name):
    cfg = _yacs(family, size)
    c = cfg.MODEL.HIERADET if family == "hieradet" else cfg.MODEL.VITDET
    c.IMG_SIZE = 256
    yacs_bb = BACKBONE_REGISTRY.get(BUILDER[family])(cfg, ShapeSpec(channels=3))
    lazy = _lazy(name)
    _bb(lazy).img_size = 256
    lazy_bb = instantiate(lazy.model.backbone)
    nets = [m.bottom_up if family == "hieradet" else m.net for m in (yacs_bb, lazy_bb)]

    def rates(net):
        return [float(getattr(blk.drop_path, "drop_prob", 0.0)) for blk in net.blocks]

    assert rates(nets[0]) == pytest.approx(rates(nets[1])) and max(rates(nets[0])) > 0
    assert repr(nets[0].pos_embed) == repr(nets[1].pos_embed)
    shapes = [{n: tuple(p.shape) for n, p in net.named_parameters()} for net in nets]
    assert shapes[0] == shapes[1]


def test_yacs_pretraining_size_and_antialias_reach_the_model():
    """The layout of timm's hiera_small_abswin_256 (at T's size) through the yacs keys."""
    cfg = _yacs("hieradet", "T")
    cfg.MODEL.HIERADET.IMG_SIZE = 256
    cfg.MODEL.HIERADET.PRETRAIN_IMG_SIZE = 256
    cfg.MODEL.HIERADET.WINDOW_SIZE = [8, 4, 16, 8]  # 256 px windows, one pretraining tile each
    cfg.MODEL.HIERADET.POS_EMBED_GLOBAL = 16
    cfg.MODEL.HIERADET.POS_EMBED_ANTIALIAS = True
    cfg.MODEL.HIERADET.EXPAND_PROJ = False
    net = BACKBONE_REGISTRY.get("build_hieradet_backbone")(cfg, ShapeSpec(channels=3))
    assert net.pos_embed.antialias is True
    assert tuple(net.pos_embed.global_embed.shape[-2:]) == (16, 16)
    assert not [n for n, _ in net.named_parameters() if re.fullmatch(r"blocks\.\d+\.proj\.weight", n)]
    cfg.MODEL.HIERADET.WINDOW_SIZE = [8, 4, 14, 7]
    with pytest.raises(ValueError, match="line up with the tiles"):
        BACKBONE_REGISTRY.get("build_hieradet_backbone")(cfg, ShapeSpec(channels=3))
    with torch.no_grad():
        assert net(torch.randn(1, 3, 256, 256))["scale5"].shape[-1] == 8


def test_yacs_optimizer_needs_one_of_our_backbones():
    cfg = get_cfg()
    add_hieradet_config(cfg)  # MODEL.BACKBONE.NAME stays detectron2's build_resnet_backbone
    with pytest.raises(ValueError, match="not one of hieradet's backbones"):
        recipe_from_cfg(cfg)
