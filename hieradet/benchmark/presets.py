"""Named models of the benchmark: our backbones, detectron2's ViTDet and SAM 2's Hiera trunk.

Every preset is derived from the backbone family declarations (:mod:`hieradet.modeling.family`: a family with a
``preset`` prefix gets one preset per size of its table) and :func:`hieradet.modeling.default_global_blocks`:

* ``hieradet-{t,s,b,b+,l,h}``: :class:`hieradet.modeling.HieraDet` (``hieradet_kwargs``), relpos on the global blocks;
* ``vitdet-{b,l,h}``: our fixed ViTDet (``vit_kwargs``: abs-win embedding, relpos on the global blocks);
* ``hivit-{t,s,b,l}``: :class:`hieradet.modeling.hivit.HiViT` (``hivit_kwargs``: Tab. 7 of Zhang et al. 2023,
  abs-win embedding, windows 14, 4 global blocks with relpos); ``--part model`` builds the HiViT project's Mask R-CNN
  (``projects/HiViT/configs/common/mask_rcnn_hivit.py``: detectron2's FPN over strides 4-32, the project's heads);
* ``d2-vitdet-{b,l,h}``: detectron2's own ``detectron2.modeling.ViT`` with its published ViTDet recipe (relpos in
  every block, window 14, interpolated embedding); ``d2-vitdet-b-norelpos``: the same without relpos;
* ``sam2-hiera-{t,s,b,b+,l}``: SAM 2's ``Hiera`` trunk of the same sizes (windows 8, 4, 14, 7, L 8, 4, 16, 8; the
  same global blocks; no relpos; background embedding 7x7 as released, 14x14 for B+ and for B, which SAM 2 did
  not release, SAM 2's default).
"""

from typing import Any, List, Tuple

from torch import nn

__all__ = [
    "PRESETS",
    "presets",
    "parse_preset",
    "build_backbone",
    "model_config",
    "d2_vit_kwargs",
    "sam2_hiera_kwargs",
]

_VIT = {"b": "B", "l": "L", "h": "H"}
_SAM2 = ("t", "s", "b", "b+", "l")  # SAM 2 has no H trunk


def _families() -> List[Any]:
    from hieradet.modeling.family import families

    return [f for f in families() if f.preset]


def presets() -> List[str]:
    """Every preset name: one per size of each registered family with a ``preset`` prefix, then detectron2's
    ViTDet and SAM 2's trunk."""
    ours = [f"{fam.preset}-{size.lower()}" for fam in _families() for size in fam.sizes]
    return ours + [f"d2-vitdet-{s}" for s in _VIT] + ["d2-vitdet-b-norelpos"] + [f"sam2-hiera-{s}" for s in _SAM2]


PRESETS = presets()  # the built-in ones (presets() also lists families registered later)


def sam2_hiera_kwargs(size: str) -> dict:
    """Constructor arguments of SAM 2's ``Hiera`` trunk for Hiera size ``size`` (``"T"`` ... ``"L"``)."""
    from hieradet.modeling import HIERA_SIZES, default_global_blocks

    if size not in HIERA_SIZES or size == "H":
        raise ValueError(f"SAM 2 has no Hiera-{size} trunk; choose from {[s.upper() for s in _SAM2]}")
    p = HIERA_SIZES[size]
    return dict(
        embed_dim=p["embed_dim"],
        num_heads=p["num_heads"],
        stages=p["stages"],
        global_att_blocks=default_global_blocks(p["stages"]),
        window_spec=(8, 4, 16, 8) if size == "L" else (8, 4, 14, 7),
        window_pos_embed_bkg_spatial_size=(14, 14) if size in ("B", "B+") else (7, 7),
    )


def d2_vit_kwargs(size: str, img_size: int, use_rel_pos: bool = True) -> dict:
    """Constructor arguments of detectron2's ``ViT`` in the published ViTDet recipe, ViT size ``size``."""
    from hieradet.modeling import VIT_SIZES

    p = VIT_SIZES[size]
    return dict(
        img_size=img_size,
        patch_size=16,
        embed_dim=p["embed_dim"],
        depth=p["depth"],
        num_heads=p["num_heads"],
        drop_path_rate=p["drop_path_rate"],
        window_size=14,
        mlp_ratio=4,
        qkv_bias=True,
        window_block_indexes=[i for i in range(p["depth"]) if i not in p["global_blocks"]],
        residual_block_indexes=[],
        use_rel_pos=use_rel_pos,
        out_feature="last_feat",
    )


def parse_preset(name: str) -> Tuple[str, str]:
    """``(family, size)`` of a preset name, e.g. ``("hieradet", "B+")``; ``ValueError`` naming the presets."""
    name = name.lower()
    for fam in _families():
        prefix = fam.preset + "-"
        sizes = {s.lower(): s for s in fam.sizes}
        if name.startswith(prefix) and name[len(prefix) :] in sizes:
            return fam.preset, sizes[name[len(prefix) :]]
    if name.startswith("sam2-hiera-") and name[len("sam2-hiera-") :] in _SAM2:
        return "sam2-hiera", name[len("sam2-hiera-") :].upper()
    if name.startswith("d2-vitdet-"):
        rest = name[len("d2-vitdet-") :]
        if rest in _VIT:
            return "d2-vitdet", _VIT[rest]
        if rest == "b-norelpos":
            return "d2-vitdet-norelpos", "B"
    raise ValueError(f"unknown model {name!r}: not a .py LazyConfig file and not a preset ({', '.join(presets())})")


def _family(preset: str):
    return next((f for f in _families() if f.preset == preset), None)


def build_backbone(name: str, img_size: int = 1024) -> nn.Module:
    """The bottom-up network of preset ``name`` (random init), sized for ``img_size`` images."""
    family, size = parse_preset(name)
    fam = _family(family)
    if fam is not None:
        return fam.cls(**fam.kwargs(size, img_size=img_size))
    if family.startswith("d2-vitdet"):
        from detectron2.modeling import ViT as D2ViT

        return D2ViT(**d2_vit_kwargs(size, img_size, use_rel_pos=family == "d2-vitdet"))
    try:
        from sam2.modeling.backbones.hieradet import Hiera
    except ImportError as e:
        raise ImportError(
            f"{name} needs the `sam2` package, hieradet's `sam2` extra: pip install 'hieradet[sam2]' "
            "(tools/install.sh installs sam2==1.1.0 with --no-deps)"
        ) from e
    return Hiera(**sam2_hiera_kwargs(size))


def _our_model(file: str):
    """The ``model`` of a family's ``detection_config``: a bare file name is under ``configs/common/models/``, a
    name with a folder is a :mod:`hieradet.model_zoo` name (``HiViT/common/mask_rcnn_hivit.py``)."""
    from detectron2.config import LazyConfig

    from hieradet.model_zoo import get_config_file

    name = file if "/" in file else f"common/models/{file}"
    return LazyConfig.load(get_config_file(name)).model


def model_config(name: str, img_size: int):
    """LazyConfig ``model`` of a whole Mask R-CNN for preset ``name``, every batch padded to an ``img_size``
    square: ours from the family's ``detection_config`` (``configs/common/models/mask_rcnn_{hieradet,vitdet}.py``,
    the HiViT project's ``common/mask_rcnn_hivit.py``) with the preset's backbone arguments, ``d2-vitdet-*`` from
    detectron2's own ``common/models/mask_rcnn_vitdet.py``."""
    family, size = parse_preset(name)
    fam = _family(family)
    if fam is not None:
        if fam.detection_config is None:
            raise ValueError(f"{name}: the {fam.name} family declares no detection_config; use it with --part backbone")
        model = _our_model(fam.detection_config)
        node = model.backbone[fam.prefix[len("backbone.") :].rstrip(".")]
        node.update(fam.kwargs(size, img_size=img_size))
    elif family.startswith("d2-vitdet"):
        from detectron2 import model_zoo

        model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
        model.backbone.net.update(d2_vit_kwargs(size, img_size, use_rel_pos=family == "d2-vitdet"))
    else:
        raise ValueError(f"{name}: SAM 2's trunk has no detection config; use it with --part backbone")
    model.backbone.square_pad = img_size
    return model
