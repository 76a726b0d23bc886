"""yacs support, so yacs-config projects can use the backbones (HieraDet, the fixed ViTDet, HiViT): the
``MODEL.HIERADET`` / ``MODEL.VITDET`` / ``MODEL.HIVIT`` config keys, detectron2 ``BACKBONE_REGISTRY`` entries
(registered by ``import hieradet``) and the recipe optimizer.

Usage from another Detectron2 project::

    import hieradet  # registers the backbones
    from hieradet.config import add_hieradet_config, build_recipe_optimizer

    cfg = get_cfg()
    add_hieradet_config(cfg)
    cfg.merge_from_file("mask_rcnn_R_50_FPN_1x.yaml")
    cfg.MODEL.BACKBONE.NAME = "build_hieradet_fpn_backbone"
    cfg.MODEL.HIERADET.SIZE = "B"
    cfg.MODEL.FPN.IN_FEATURES = ["scale2", "scale3", "scale4", "scale5"]
    optimizer = build_recipe_optimizer(cfg, model)  # AdamW with the size's lr, layer decay and groups

The builders apply the layout of ``MODEL.WEIGHTS`` (:func:`apply_yacs_checkpoint_layout`) to a copy of the config
before building, printing one line per key they change, so a raw public file (official Hiera, SAM 2, timm abs-win,
MAE ViT, HiViT), a converted one or a ``model_final.pth`` builds the backbone its weights need.

``-1`` in ``DROP_PATH_RATE``, ``LR_DECAY_RATE`` and ``BASE_LR`` means the size's default, the same values the
LazyConfigs use (``hieradet.solver.HIERADET_RECIPES`` / ``VITDET_RECIPES``: Bolya et al. 2024 Tab. 16, ViTDet).
"""

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.backbone.vit import SimpleFeaturePyramid

from .modeling.family import get_family
from .modeling.hieradet import HieraDet, hieradet_kwargs
from .modeling.hivit import HiViT, hivit_kwargs
from .modeling.vit import ViT, vit_kwargs
from .solver.param_groups import VITDET_NO_WEIGHT_DECAY_KEYS, get_optimizer_params
from .solver.recipes import size_recipe

__all__ = [
    "add_hieradet_config",
    "apply_yacs_checkpoint_layout",
    "add_hivit_config",
    "build_hieradet_backbone",
    "build_hieradet_fpn_backbone",
    "build_hivit_backbone",
    "build_hivit_fpn_backbone",
    "build_recipe_optimizer",
    "build_vitdet_backbone",
    "recipe_from_cfg",
]


def add_hieradet_config(cfg: CN) -> None:
    """Adds ``MODEL.HIERADET`` and ``MODEL.VITDET`` (the fixed ViTDet) keys with their defaults."""
    cfg.MODEL.HIERADET = CN()
    c = cfg.MODEL.HIERADET
    c.SIZE = "B"  # T, S, B, B+, L, H
    c.WINDOW_SIZE = [8, 4, 14, 7]
    c.GLOBAL_BLOCKS = []  # empty: the size's default (e.g. B: 12, 16, 20)
    c.RELPOS = "global"  # global | all | none
    c.POS_EMBED = "auto"  # auto (the checkpoint's natural mode; abswin without one), abswin, abswin_single, interpolate
    c.POS_EMBED_WINDOW = 8  # 56 for an original Hiera checkpoint (its full grid is the tile)
    c.POS_EMBED_GLOBAL = 7  # 0 for none
    c.PRETRAIN_IMG_SIZE = 224  # image size of the pretrained model (timm's abs-win Hiera: 256)
    c.POS_EMBED_ANTIALIAS = False  # antialiased global-embedding interpolation (timm's abs-win Hiera: True)
    c.EXPAND_PROJ = True  # False: stage transitions widen without a projection (timm's hiera_small_abswin_256)
    c.IMG_SIZE = 1024
    c.DROP_PATH_RATE = -1.0  # < 0: the size's default (Tab. 16: B 0.2, B+ 0.3, L 0.45, H 0.55)
    c.LR_DECAY_RATE = -1.0  # < 0: the size's default (Tab. 16: B/B+ 0.85, L 0.9, H 0.925); for build_recipe_optimizer
    c.BASE_LR = -1.0  # < 0: the size's COCO lr (Tab. 16: B 1.4e-4, B+ 7e-5, L 1.2e-4, H 6e-5); build_recipe_optimizer
    c.USE_ACT_CHECKPOINT = False
    c.OUT_FEATURES = ["scale2", "scale3", "scale4", "scale5"]

    cfg.MODEL.VITDET = CN()
    v = cfg.MODEL.VITDET
    v.SIZE = "B"  # B, L, H
    v.WINDOW_SIZE = 14
    v.RELPOS = "global"
    v.POS_EMBED = "auto"  # auto (abswin unless the checkpoint was trained otherwise) | abswin | interpolate
    v.PRETRAIN_IMG_SIZE = 224  # image size of the pretrained ViT (224: a 14x14 grid)
    v.IMG_SIZE = 1024
    v.DROP_PATH_RATE = -1.0  # < 0: the size's default (ViTDet: B 0.1, L 0.4, H 0.5)
    v.LR_DECAY_RATE = -1.0  # < 0: the size's default (ViTDet: B 0.7, L 0.8, H 0.9); for build_recipe_optimizer
    v.BASE_LR = -1.0  # < 0: the size's COCO lr (ViTDet: 1e-4); for build_recipe_optimizer
    v.USE_ACT_CHECKPOINT = False
    v.SCALE_FACTORS = [4.0, 2.0, 1.0, 0.5]


def _family(cfg: CN) -> str:
    family = _yacs_family(cfg)
    if family in ("hieradet", "vitdet"):  # the families with a recipe table
        return family
    raise ValueError(f"MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME!r} is not one of hieradet's backbones")


def recipe_from_cfg(cfg: CN, family: str = None) -> dict:
    """The recipe values ``dict(lr, drop_path_rate, lr_decay_rate, weight_decay)`` the yacs ``cfg`` asks for:
    ``MODEL.HIERADET`` (or ``MODEL.VITDET``) values, ``-1`` replaced by the size's default.

    Args:
        cfg: a config with :func:`add_hieradet_config` keys.
        family (str or None): "hieradet" or "vitdet"; ``None`` reads it from ``MODEL.BACKBONE.NAME``.
    """
    family = family or _family(cfg)
    c = cfg.MODEL.HIERADET if family == "hieradet" else cfg.MODEL.VITDET
    recipe = size_recipe(family, c.SIZE)
    for key, value in (("lr", c.BASE_LR), ("drop_path_rate", c.DROP_PATH_RATE), ("lr_decay_rate", c.LR_DECAY_RATE)):
        if value >= 0:
            recipe[key] = float(value)
    return recipe


def build_recipe_optimizer(cfg: CN, model):
    """AdamW over ``model`` with the recipe of the yacs ``cfg``'s backbone and size, as the LazyConfigs build it:
    lr, weight decay 0.1, betas (0.9, 0.999), layer-wise lr decay, and the parameter groups of the family
    (HieraDet: Tab. 16's exemptions; fixed ViTDet: ViTDet's own groups, ViT-H decaying everything).

    Args:
        cfg: a config with :func:`add_hieradet_config` keys and ``MODEL.BACKBONE.NAME`` one of ours.
        model: the built detector (its backbone under ``model.backbone``).
    """
    import torch

    family = _family(cfg)
    recipe = recipe_from_cfg(cfg, family)
    kw = {}
    if family == "vitdet":
        kw = dict(norm_types="torch", weight_decay_bias=None, no_weight_decay_keys=VITDET_NO_WEIGHT_DECAY_KEYS)
        if cfg.MODEL.VITDET.SIZE == "H":  # ViTDet-H: overrides={} and weight_decay_norm=None
            kw.update(weight_decay_norm=None, no_weight_decay_keys=())
    params = get_optimizer_params(model, base_lr=recipe["lr"], lr_decay_rate=recipe["lr_decay_rate"], **kw)
    return torch.optim.AdamW(params, lr=recipe["lr"], betas=(0.9, 0.999), weight_decay=recipe["weight_decay"])


# ---------------------------------------------------------------------------------------------------------------
# the layout of MODEL.WEIGHTS


@dataclass(frozen=True)
class _YacsFamily:
    """The yacs side of a backbone family: its ``MODEL.<node>`` keys, the builders that read them, and which layout
    field each key sets (a field without a key must already agree with what the size builds)."""

    arch: str  # the family (hieradet.modeling.family)
    node: str  # cfg.MODEL.<node>
    add_config: str  # the function that adds the node's keys
    builders: Tuple[str, ...]  # BACKBONE_REGISTRY names that build it
    layout_keys: Dict[str, str]  # layout field -> yacs key


_COMMON_KEYS = dict(pos_embed="POS_EMBED", window_size="WINDOW_SIZE", img_size="IMG_SIZE")
_YACS = {
    "hieradet": _YacsFamily(
        "HieraDet",
        "HIERADET",
        "add_hieradet_config",
        ("build_hieradet_backbone", "build_hieradet_fpn_backbone"),
        dict(
            _COMMON_KEYS,
            pretrain_img_size="PRETRAIN_IMG_SIZE",
            pos_embed_window="POS_EMBED_WINDOW",
            pos_embed_global="POS_EMBED_GLOBAL",
            pos_embed_antialias="POS_EMBED_ANTIALIAS",
            global_blocks="GLOBAL_BLOCKS",
            expand_proj="EXPAND_PROJ",
        ),
    ),
    "vitdet": _YacsFamily(
        "ViT",
        "VITDET",
        "add_hieradet_config",
        ("build_vitdet_backbone",),
        dict(_COMMON_KEYS, pretrain_img_size="PRETRAIN_IMG_SIZE"),
    ),
    "hivit": _YacsFamily(
        "HiViT",
        "HIVIT",
        "add_hivit_config",
        ("build_hivit_backbone", "build_hivit_fpn_backbone"),
        dict(_COMMON_KEYS, global_blocks="GLOBAL_BLOCKS", out_norm="OUT_NORM"),
    ),
}


def _yacs_family(cfg: CN) -> Optional[str]:
    name = cfg.MODEL.BACKBONE.NAME
    return next((family for family, y in _YACS.items() if name in y.builders), None)


def _built_values(family: str, c: CN) -> Dict[str, Any]:
    """The layout and architecture fields the yacs node ``c`` builds with, as the layout record names them."""
    if family == "hieradet":
        kw = hieradet_kwargs(c.SIZE)
        if c.GLOBAL_BLOCKS:
            kw["global_blocks"] = tuple(c.GLOBAL_BLOCKS)
        kw.update(
            pretrain_img_size=c.PRETRAIN_IMG_SIZE,
            pos_embed=c.POS_EMBED,
            pos_embed_window=c.POS_EMBED_WINDOW or None,
            pos_embed_global=c.POS_EMBED_GLOBAL or None,
            pos_embed_antialias=c.POS_EMBED_ANTIALIAS,
            window_size=tuple(c.WINDOW_SIZE),
            expand_proj=c.EXPAND_PROJ,
            img_size=c.IMG_SIZE,
        )
    elif family == "vitdet":
        kw = dict(vit_kwargs(c.SIZE), pretrain_img_size=c.PRETRAIN_IMG_SIZE, pos_embed=c.POS_EMBED)
        kw.update(window_size=c.WINDOW_SIZE, img_size=c.IMG_SIZE)
    else:
        kw = hivit_kwargs(c.SIZE)
        if c.GLOBAL_BLOCKS:
            kw["global_blocks"] = tuple(c.GLOBAL_BLOCKS)
        kw.update(pos_embed=c.POS_EMBED, window_size=c.WINDOW_SIZE, out_norm=c.OUT_NORM, img_size=c.IMG_SIZE)
    fam = get_family(_YACS[family].arch)
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(fam.cls.__init__).parameters.items()}
    values = dict(defaults, **kw)
    values["global_blocks"] = fam.resolve_global_blocks(values)
    return values


def _yacs_value(field: str, value: Any) -> Any:
    if field in ("pos_embed_window", "pos_embed_global") and value is None:
        return 0  # the yacs keys' "none"
    return list(value) if isinstance(value, (list, tuple)) else value


def apply_yacs_checkpoint_layout(
    cfg: CN, path: Optional[str] = None, allow_pickle: bool = False, log: Optional[Callable[[str], None]] = None
) -> List[Tuple[str, Any, Any]]:
    """Sets the ``MODEL.HIERADET`` / ``MODEL.VITDET`` / ``MODEL.HIVIT`` keys the weights in ``path`` (default:
    ``MODEL.WEIGHTS``) need, as :func:`hieradet.checkpoint.apply_checkpoint_layout` sets a LazyConfig's fields.

    ``POS_EMBED="auto"`` becomes the checkpoint's mode; an explicit mode is kept for a converted or raw file (and the
    line says so) and refused for a trained one. Nothing happens without weights, for a backbone that is not ours,
    or for a detectron2 file without a layout record (e.g. a ``.pkl``).

    Args:
        cfg: a yacs config with this package's keys (changed in place; it must not be frozen).
        path (str or None): the checkpoint; ``None`` reads ``cfg.MODEL.WEIGHTS``.
        allow_pickle (bool): see :func:`hieradet.checkpoint.load_checkpoint_file`.
        log: where the lines go (default: ``print``).
    Returns:
        ``[(key, old, new)]`` of the keys it changed.
    Raises:
        FileNotFoundError, CheckpointError: no such file; a damaged or unknown file; weights of another family or
            size than ``MODEL.*.SIZE`` builds; a trained file whose mode the config contradicts; a recorded field
            the yacs keys cannot express.
    """
    from .checkpoint import CheckpointError, read_checkpoint_layout
    from .checkpoint.layout import _merged_windows
    from .modeling.layout_record import same_img_size, same_value

    log = log or (lambda line: print(line, flush=True))
    path = cfg.MODEL.WEIGHTS if path is None else path
    family = _yacs_family(cfg)
    if not path or family is None:
        return []
    name = os.path.basename(path.split("?")[0])
    if name.endswith(".pkl"):
        return []  # detectron2's pickled model zoo files: none of our backbones
    record = read_checkpoint_layout(path, allow_pickle)
    if record is None:
        log(f"[checkpoint layout] {name} has no layout record (a detectron2 checkpoint): the config's layout is kept")
        return []
    yacs = _YACS[family]
    node_name = yacs.node
    if node_name not in cfg.MODEL:
        raise KeyError(f"cfg.MODEL.{node_name} is missing: call hieradet.config.{yacs.add_config}(cfg) first")
    c, arch = cfg.MODEL[node_name], yacs.arch
    if record["arch"] != arch:
        raise CheckpointError(
            f"{path} holds {record['arch']} weights, but MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME!r} builds a "
            f"{arch}. Use a backbone of the checkpoint's family."
        )
    built = _built_values(family, c)
    arch_fields = record["architecture"]
    if not all(same_value(built[k], v) for k, v in arch_fields.items()):
        shape = ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v}" for k, v in arch_fields.items())
        have = ", ".join(f"{k}={tuple(built[k]) if isinstance(built[k], list) else built[k]}" for k in arch_fields)
        size = f" (MODEL.{node_name}.SIZE = {record['size']!r})" if record.get("size") else ""
        raise CheckpointError(
            f"size mismatch: {path} holds a {arch} with {shape}{size}, but MODEL.{node_name}.SIZE={c.SIZE!r} builds "
            f"{have}. Set the size of the checkpoint, or use the checkpoint of the config's size."
        )
    trained = record.get("kind") == "trained"
    changes = []
    for field, value in record["layout"].items():
        current = built.get(field)
        key = yacs.layout_keys.get(field)
        if field == "pos_embed":
            if current == "auto":
                why = "the mode it was trained in" if trained else "the checkpoint's natural mode"
                log(f"[checkpoint layout] MODEL.{node_name}.POS_EMBED: 'auto' -> {value!r} ({why}, from {name})")
                changes.append((f"MODEL.{node_name}.POS_EMBED", current, value))
                c.POS_EMBED = value
            elif current != value:
                if trained:
                    raise CheckpointError(
                        f"layout conflict: {path} was trained with pos_embed={value!r}, but "
                        f"MODEL.{node_name}.POS_EMBED={current!r}. Set it to 'auto' (or {value!r}) to run the "
                        "weights as trained."
                    )
                log(
                    f"[checkpoint layout] MODEL.{node_name}.POS_EMBED: keeping {current!r}, named by the config (the "
                    f"checkpoint's natural mode is {value!r})"
                )
            continue
        if field == "window_size":
            value = _merged_windows(_yacs_value(field, current), value)
        if field == "img_size" and same_img_size(arch, current, value):
            continue
        if same_value(current, value):
            continue
        if key is None:
            raise CheckpointError(
                f"{path} needs {field}={value!r}, but the yacs keys of MODEL.{node_name} cannot set it (the size "
                f"builds {field}={current!r}). Build the backbone with a LazyConfig and "
                "hieradet.checkpoint.apply_checkpoint_layout instead."
            )
        new, old = _yacs_value(field, value), c[key]
        log(f"[checkpoint layout] MODEL.{node_name}.{key}: {old!r} -> {new!r} (from {name})")
        changes.append((f"MODEL.{node_name}.{key}", old, new))
        c[key] = new
    return changes


def _with_weights_layout(cfg: CN) -> CN:
    """A copy of ``cfg`` with the layout of ``MODEL.WEIGHTS`` applied (the builders build from it)."""
    if not cfg.MODEL.WEIGHTS or _yacs_family(cfg) is None:
        return cfg
    cfg = cfg.clone()
    cfg.defrost()
    apply_yacs_checkpoint_layout(cfg)
    return cfg


def _hieradet_from_cfg(cfg: CN) -> HieraDet:
    cfg = _with_weights_layout(cfg)
    c = cfg.MODEL.HIERADET
    kw = hieradet_kwargs(c.SIZE)
    kw["drop_path_rate"] = recipe_from_cfg(cfg, "hieradet")["drop_path_rate"]
    if c.GLOBAL_BLOCKS:
        kw["global_blocks"] = tuple(c.GLOBAL_BLOCKS)
    return HieraDet(
        **kw,
        window_size=tuple(c.WINDOW_SIZE),
        relpos=c.RELPOS,
        img_size=c.IMG_SIZE,
        pretrain_img_size=c.PRETRAIN_IMG_SIZE,
        pos_embed=c.POS_EMBED,
        pos_embed_window=c.POS_EMBED_WINDOW or None,
        pos_embed_global=c.POS_EMBED_GLOBAL or None,
        pos_embed_antialias=c.POS_EMBED_ANTIALIAS,
        expand_proj=c.EXPAND_PROJ,
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
    return _fpn_from_cfg(cfg, _hieradet_from_cfg(cfg), "HieraDet")


def _fpn_from_cfg(cfg: CN, bottom_up, name: str, square_pad: int = 0) -> FPN:
    """detectron2's FPN (p2-p6 with ``LastLevelMaxPool``) over ``bottom_up``, configured by ``MODEL.FPN``;
    ``MODEL.FPN.IN_FEATURES`` naming a feature ``bottom_up`` does not output is an error naming both."""
    in_features: List[str] = list(cfg.MODEL.FPN.IN_FEATURES)
    missing = [f for f in in_features if f not in bottom_up.output_shape()]
    if missing:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES {in_features} asks for {missing}, which {name} does not output; {name} outputs "
            f"{list(bottom_up.output_shape())} (set MODEL.FPN.IN_FEATURES = ['scale2', 'scale3', 'scale4', 'scale5'])"
        )
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        square_pad=square_pad,
    )


@BACKBONE_REGISTRY.register()
def build_vitdet_backbone(cfg: CN, input_shape: ShapeSpec) -> SimpleFeaturePyramid:
    """Fixed ViTDet (abs-win ViT) + detectron2's SimpleFeaturePyramid (p2-p6), square-padded."""
    cfg = _with_weights_layout(cfg)
    v = cfg.MODEL.VITDET
    kw = vit_kwargs(v.SIZE)
    kw["drop_path_rate"] = recipe_from_cfg(cfg, "vitdet")["drop_path_rate"]
    net = ViT(
        **kw,
        img_size=v.IMG_SIZE,
        pretrain_img_size=v.PRETRAIN_IMG_SIZE,
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


# ---------------------------------------------------------------------------------------------------------------
# HiViT (Zhang et al. 2023)


def add_hivit_config(cfg: CN) -> None:
    """Adds the ``MODEL.HIVIT`` keys with their defaults (HiViT-B, abs-win, relpos on the global blocks)."""
    cfg.MODEL.HIVIT = CN()
    c = cfg.MODEL.HIVIT
    c.SIZE = "B"  # T, S, B, L
    c.WINDOW_SIZE = 14
    c.GLOBAL_BLOCKS = []  # empty: 4 evenly spaced (B: 4, 9, 14, 19)
    c.RELPOS = "global"  # global | all | none
    c.POS_EMBED = "auto"  # auto (abswin unless the checkpoint was trained otherwise) | abswin | interpolate
    c.IMG_SIZE = 1024
    c.DROP_PATH_RATE = -1.0  # < 0: the size's default (B: 0.2)
    c.USE_ACT_CHECKPOINT = False
    c.OUT_NORM = True
    c.SQUARE_PAD = False  # True: pad every batch to IMG_SIZE x IMG_SIZE (LSJ-style data)
    c.OUT_FEATURES = ["scale2", "scale3", "scale4", "scale5"]


def _hivit_from_cfg(cfg: CN) -> HiViT:
    if "HIVIT" not in cfg.MODEL:
        raise KeyError("cfg.MODEL.HIVIT is missing: call hieradet.config.add_hivit_config(cfg) first")
    cfg = _with_weights_layout(cfg)
    c = cfg.MODEL.HIVIT
    kw = hivit_kwargs(c.SIZE)
    if c.GLOBAL_BLOCKS:
        kw["global_blocks"] = tuple(c.GLOBAL_BLOCKS)
    if c.DROP_PATH_RATE >= 0:
        kw["drop_path_rate"] = c.DROP_PATH_RATE
    return HiViT(
        **kw,
        window_size=c.WINDOW_SIZE,
        relpos=c.RELPOS,
        pos_embed=c.POS_EMBED,
        img_size=c.IMG_SIZE,
        out_norm=c.OUT_NORM,
        use_act_checkpoint=c.USE_ACT_CHECKPOINT,
        out_features=tuple(c.OUT_FEATURES),
    )


@BACKBONE_REGISTRY.register()
def build_hivit_backbone(cfg: CN, input_shape: ShapeSpec) -> HiViT:
    """HiViT alone (features ``scale2``-``scale5``), configured by ``MODEL.HIVIT``."""
    return _hivit_from_cfg(cfg)


@BACKBONE_REGISTRY.register()
def build_hivit_fpn_backbone(cfg: CN, input_shape: ShapeSpec) -> FPN:
    """HiViT + detectron2's FPN (p2-p6), configured by ``MODEL.HIVIT`` and ``MODEL.FPN``."""
    square_pad = cfg.MODEL.HIVIT.IMG_SIZE if cfg.MODEL.HIVIT.SQUARE_PAD else 0
    return _fpn_from_cfg(cfg, _hivit_from_cfg(cfg), "HiViT", square_pad)
