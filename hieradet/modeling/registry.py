"""detectron2 ``BACKBONE_REGISTRY`` entries, so yacs-config projects can use the backbones.

Usage from another Detectron2 project::

    import hieradet  # registers the backbones
    from hieradet.modeling.registry import add_hieradet_config

    cfg = get_cfg()
    add_hieradet_config(cfg)
    cfg.merge_from_file("mask_rcnn_R_50_FPN_1x.yaml")
    cfg.MODEL.BACKBONE.NAME = "build_hieradet_fpn_backbone"
    cfg.MODEL.HIERADET.SIZE = "B"
    cfg.MODEL.FPN.IN_FEATURES = ["scale2", "scale3", "scale4", "scale5"]
"""

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.backbone.vit import SimpleFeaturePyramid

from .hieradet import HieraDet, hieradet_kwargs
from .vit import ViT, vit_kwargs

__all__ = ["add_hieradet_config", "build_hieradet_backbone", "build_hieradet_fpn_backbone", "build_vitdet_backbone"]


def add_hieradet_config(cfg: CN) -> None:
    """Adds ``MODEL.HIERADET`` and ``MODEL.VITDET`` (the fixed ViTDet) keys with their defaults."""
    cfg.MODEL.HIERADET = CN()
    c = cfg.MODEL.HIERADET
    c.SIZE = "B"  # T, S, B, B+, L, H
    c.WINDOW_SIZE = [8, 4, 14, 7]
    c.GLOBAL_BLOCKS = []  # empty: the size's default (e.g. B: 12, 16, 20)
    c.RELPOS = "global"  # global | all | none
    c.POS_EMBED = "abswin"  # abswin | abswin_single | interpolate
    c.POS_EMBED_WINDOW = 8  # 56 for an original Hiera checkpoint (its full grid is the tile)
    c.POS_EMBED_GLOBAL = 7  # 0 for none
    c.IMG_SIZE = 1024
    c.DROP_PATH_RATE = 0.2
    c.USE_ACT_CHECKPOINT = False
    c.OUT_FEATURES = ["scale2", "scale3", "scale4", "scale5"]

    cfg.MODEL.VITDET = CN()
    v = cfg.MODEL.VITDET
    v.SIZE = "B"  # B, L, H
    v.WINDOW_SIZE = 14
    v.RELPOS = "global"
    v.POS_EMBED = "abswin"  # abswin | interpolate
    v.IMG_SIZE = 1024
    v.DROP_PATH_RATE = 0.1
    v.USE_ACT_CHECKPOINT = False
    v.SCALE_FACTORS = [4.0, 2.0, 1.0, 0.5]


def _hieradet_from_cfg(cfg: CN) -> HieraDet:
    c = cfg.MODEL.HIERADET
    kw = hieradet_kwargs(c.SIZE)
    if c.GLOBAL_BLOCKS:
        kw["global_blocks"] = tuple(c.GLOBAL_BLOCKS)
    return HieraDet(
        **kw,
        window_size=tuple(c.WINDOW_SIZE),
        relpos=c.RELPOS,
        img_size=c.IMG_SIZE,
        pos_embed=c.POS_EMBED,
        pos_embed_window=c.POS_EMBED_WINDOW or None,
        pos_embed_global=c.POS_EMBED_GLOBAL or None,
        drop_path_rate=c.DROP_PATH_RATE,
        use_act_checkpoint=c.USE_ACT_CHECKPOINT,
        out_features=tuple(c.OUT_FEATURES),
    )


@BACKBONE_REGISTRY.register()
def build_hieradet_backbone(cfg: CN, input_shape: ShapeSpec) -> HieraDet:
    """HieraDet alone (features ``scale2``-``scale5``), e.g. for a project with its own neck."""
    return _hieradet_from_cfg(cfg)


@BACKBONE_REGISTRY.register()
def build_hieradet_fpn_backbone(cfg: CN, input_shape: ShapeSpec) -> FPN:
    """HieraDet + detectron2's FPN (p2-p6), configured by ``MODEL.HIERADET`` and ``MODEL.FPN``."""
    return FPN(
        bottom_up=_hieradet_from_cfg(cfg),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_vitdet_backbone(cfg: CN, input_shape: ShapeSpec) -> SimpleFeaturePyramid:
    """Fixed ViTDet (abs-win ViT) + detectron2's SimpleFeaturePyramid (p2-p6), square-padded."""
    v = cfg.MODEL.VITDET
    kw = vit_kwargs(v.SIZE)
    kw["drop_path_rate"] = v.DROP_PATH_RATE
    net = ViT(
        **kw,
        img_size=v.IMG_SIZE,
        window_size=v.WINDOW_SIZE,
        relpos=v.RELPOS,
        pos_embed=v.POS_EMBED,
        use_act_checkpoint=v.USE_ACT_CHECKPOINT,
    )
    return SimpleFeaturePyramid(
        net=net,
        in_feature="last_feat",
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        scale_factors=tuple(v.SCALE_FACTORS),
        top_block=LastLevelMaxPool(),
        norm="LN",
        square_pad=v.IMG_SIZE,
    )
