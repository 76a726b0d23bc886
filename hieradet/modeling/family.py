"""Backbone families: each family (HieraDet, the fixed ViTDet, HiViT) is declared once, as a :class:`BackboneFamily`,
and everything above the models reads the declaration: the checkpoint converter and layout record (class, size
table, architecture and layout fields, key prefix), the test helpers (tiny constructor arguments, neck), the
benchmark presets and the recipe table (size names).

Adding a backbone family means a model file plus one :func:`register_family` call (and, for checkpoints of a public
format, a :class:`hieradet.checkpoint.formats.SourceFormat` naming the family)::

    from hieradet.modeling.family import BackboneFamily, register_family

    register_family(BackboneFamily(name="MyNet", cls=MyNet, sizes={"S": dict(embed_dim=256, depth=8)},
                                   architecture_fields=("embed_dim", "depth"), layout_fields=(...), ...))

This module imports nothing else of the package but the backbones' own modules.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from torch import nn

from .hieradet import HIERA_SIZES, HieraDet, default_global_blocks, hieradet_kwargs
from .hivit import HIVIT_SIZES, HiViT, default_hivit_global_blocks, hivit_kwargs
from .layout_record import hieradet_layout, hivit_layout, plain_vit_layout
from .vit import VIT_SIZES, ViT, vit_kwargs

__all__ = [
    "BackboneFamily",
    "NECKS",
    "family_of",
    "get_family",
    "families",
    "match_size",
    "register_family",
    "unregister_family",
]

# where a family's bottom-up network sits in the project's detection configs: "fpn" -> detectron2's FPN over the
# multi-scale outputs (``backbone.bottom_up``), "simple_pyramid" -> ViTDet's SimpleFeaturePyramid (``backbone.net``)
NECKS = {"fpn": "backbone.bottom_up.", "simple_pyramid": "backbone.net."}


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple)) or type(v).__name__ == "ListConfig":
        return tuple(_plain(x) for x in v)
    return v


def match_size(sizes: Mapping[str, Mapping[str, Any]], fields: Mapping[str, Any]) -> Optional[str]:
    """The name of the first preset in ``sizes`` whose values equal every one of ``fields`` (sequences compare
    element-wise, whatever their type: tuple, list, ListConfig), ``None`` when no preset does. The one size matcher
    of the package (conversion, layout records, the recipe table)."""
    want = {k: _plain(v) for k, v in fields.items()}
    for name, preset in sizes.items():
        if all(k in preset and _plain(preset[k]) == v for k, v in want.items()):
            return name
    return None


@dataclass(frozen=True)
class BackboneFamily:
    """The declaration of one backbone family.

    Args:
        name (str): the family's name as layout records and converted checkpoints store it (``"HieraDet"``).
        cls (type): the backbone class (a :class:`~hieradet.modeling.base.PaddedBackbone`, so its state dict
            carries the layout record).
        sizes (dict): the preset table, ``{size: constructor fields}``.
        architecture_fields (tuple[str]): constructor fields that give the weights their shapes: a checkpoint
            and a config that differ in one are different sizes.
        layout_fields (tuple[str]): constructor fields that must agree with a checkpoint's weights (set by
            :func:`hieradet.checkpoint.apply_checkpoint_layout`).
        tiny_kwargs (dict): constructor arguments of a tiny backbone of the same structure, for tests and smoke
            runs (:mod:`hieradet.testing`; ``img_size`` is added there).
        key (str): short lower-case name: the ``backbone`` argument of :mod:`hieradet.testing`.
        neck (str): a key of :data:`NECKS`: which detectron2 neck the project's configs put on it, and so the key
            prefix of its weights in a detection checkpoint.
        size_kwargs (callable or None): ``size, **overrides -> constructor kwargs`` (e.g. resolving the size's
            global blocks); default: the size's fields plus the overrides.
        global_blocks (callable or None): ``constructor values -> global blocks`` when ``global_blocks`` is None
            (the constructor's own default rule); default: the values' ``global_blocks``.
        model_layout (callable or None): ``module -> (layout, architecture)`` read from a built backbone;
            default: :func:`hieradet.modeling.layout_record.plain_vit_layout` (one stride, ``depth`` blocks).
        size_match_fields (tuple[str] or None): fields that name a size in a config (the recipe table); default:
            ``architecture_fields`` plus ``num_heads``.
        preset (str or None): benchmark preset prefix (``"hieradet"`` gives ``hieradet-b``, ...); None: no preset.
        detection_config (str or None): the LazyConfig that the benchmark builds a whole detector from for the
            preset (its ``model``, with the preset's size): a bare file name is under ``configs/common/models/``
            (``"mask_rcnn_hieradet.py"``), a name with a folder is a :mod:`hieradet.model_zoo` name
            (``"HiViT/common/mask_rcnn_hivit.py"``, the HiViT project's); None: ``--part backbone`` only.
        label (str or None): name in the recipe table (default ``name``).
        token_stride (int): input pixels per patch-embedding stride unit of the main blocks (HiViT's stem merges
            twice: 4).
    """

    name: str
    cls: type
    sizes: Mapping[str, Mapping[str, Any]]
    architecture_fields: Tuple[str, ...]
    layout_fields: Tuple[str, ...]
    tiny_kwargs: Mapping[str, Any]
    key: str
    neck: str = "fpn"
    size_kwargs: Optional[Callable[..., Dict[str, Any]]] = None
    global_blocks: Optional[Callable[[Mapping[str, Any]], Tuple[int, ...]]] = None
    model_layout: Optional[Callable[[nn.Module], Tuple[Dict[str, Any], Dict[str, Any]]]] = None
    size_match_fields: Optional[Tuple[str, ...]] = None
    preset: Optional[str] = None
    detection_config: Optional[str] = None
    label: Optional[str] = None
    token_stride: int = 1

    def __post_init__(self):
        if self.neck not in NECKS:
            raise ValueError(f"family {self.name}: neck must be one of {list(NECKS)}, got {self.neck!r}")
        if not isinstance(self.cls, type) or not issubclass(self.cls, nn.Module):
            raise TypeError(f"family {self.name}: cls must be an nn.Module class, got {self.cls!r}")
        bad = [s for s, p in self.sizes.items() if not set(self.architecture_fields) <= set(p)]
        if bad:
            raise ValueError(f"family {self.name}: sizes {bad} lack architecture fields {self.architecture_fields}")

    @property
    def prefix(self) -> str:
        """Key prefix of the backbone's weights in the project's detection checkpoints."""
        return NECKS[self.neck]

    def kwargs(self, size: str, **overrides) -> Dict[str, Any]:
        """Constructor arguments of preset ``size`` updated with ``overrides``."""
        if self.size_kwargs is not None:
            return self.size_kwargs(size, **overrides)
        if size not in self.sizes:
            raise ValueError(f"unknown {self.name} size {size!r}; choose from {list(self.sizes)}")
        return {**self.sizes[size], **overrides}

    def size_of(self, fields: Mapping[str, Any]) -> Optional[str]:
        """The preset name of a backbone with these fields (see :func:`match_size`), None for a custom size."""
        return match_size(self.sizes, fields)

    def resolve_global_blocks(self, values: Mapping[str, Any]) -> Any:
        """``values["global_blocks"]``, or the family's default for these constructor values when it is None."""
        if values.get("global_blocks") is None and self.global_blocks is not None:
            return self.global_blocks(values)
        return values.get("global_blocks")

    def layout(self, module: nn.Module) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """``(layout, architecture)`` of a built backbone of this family."""
        return (self.model_layout or plain_vit_layout)(module)


_FAMILIES: Dict[str, BackboneFamily] = {}


def register_family(family: BackboneFamily) -> BackboneFamily:
    """Makes ``family`` known to the package (checkpoints, layout records, test helpers, benchmark presets).

    Raises:
        ValueError: a family of that name, key, preset or class is already registered.
    """
    for other in _FAMILIES.values():
        clash = [
            what
            for what, a, b in (
                ("name", family.name, other.name),
                ("key", family.key, other.key),
                ("preset", family.preset, other.preset),
                ("class", family.cls, other.cls),
            )
            if a is not None and a == b
        ]
        if clash:
            raise ValueError(
                f"backbone family {family.name} has the same {', '.join(clash)} as the registered family {other.name}; "
                "choose another, or unregister_family() the old one first"
            )
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Forgets the family ``name`` (e.g. a test's toy family)."""
    get_family(name)
    del _FAMILIES[name]


def families() -> Tuple[BackboneFamily, ...]:
    """Every registered family, in registration order (the built-in ones first)."""
    return tuple(_FAMILIES.values())


def get_family(name: str) -> BackboneFamily:
    """The family called ``name`` (its :attr:`~BackboneFamily.name` or :attr:`~BackboneFamily.key`).

    Raises:
        ValueError: no such family (the message names the registered ones).
    """
    if name in _FAMILIES:
        return _FAMILIES[name]
    for fam in _FAMILIES.values():
        if fam.key == name:
            return fam
    raise ValueError(
        f"unknown backbone family {name!r}; registered: "
        + ", ".join(f"{f.name} ({f.key})" for f in _FAMILIES.values())
        + " (a new family is declared with hieradet.modeling.family.register_family)"
    )


def family_of(obj: Union[nn.Module, type, None]) -> Optional[BackboneFamily]:
    """The family of a backbone module or class (the most derived registered class it is an instance or subclass
    of), None when it is none of them."""
    if obj is None:
        return None
    cls = obj if isinstance(obj, type) else type(obj)
    for base in cls.__mro__:
        for fam in _FAMILIES.values():
            if fam.cls is base:
                return fam
    return None


# ----------------------------------------------------------------------------------------------
# the built-in families


def _hiera_global_blocks(values: Mapping[str, Any]) -> Tuple[int, ...]:
    return default_global_blocks(tuple(values["stages"]))


def _hivit_global_blocks(values: Mapping[str, Any]) -> Tuple[int, ...]:
    depth = tuple(values["depths"])[2]
    return default_hivit_global_blocks(depth, min(4, depth))


register_family(
    BackboneFamily(
        name="HieraDet",
        cls=HieraDet,
        sizes=HIERA_SIZES,
        architecture_fields=("embed_dim", "stages"),
        layout_fields=(
            "pretrain_img_size",
            "pos_embed",
            "pos_embed_window",
            "pos_embed_global",
            "pos_embed_antialias",
            "window_size",
            "global_blocks",
            "expand_proj",
        ),
        tiny_kwargs=dict(embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), global_blocks=(3,)),
        key="hieradet",
        neck="fpn",
        size_kwargs=hieradet_kwargs,
        global_blocks=_hiera_global_blocks,
        model_layout=hieradet_layout,
        preset="hieradet",
        detection_config="mask_rcnn_hieradet.py",
    )
)
register_family(
    BackboneFamily(
        name="ViT",
        cls=ViT,
        sizes=VIT_SIZES,
        architecture_fields=("embed_dim", "depth"),
        layout_fields=("pretrain_img_size", "pos_embed", "patch_size", "window_size", "global_blocks"),
        tiny_kwargs=dict(embed_dim=32, depth=2, num_heads=2, global_blocks=(1,)),
        key="vit",
        neck="simple_pyramid",
        size_kwargs=vit_kwargs,
        model_layout=plain_vit_layout,
        preset="vitdet",
        detection_config="mask_rcnn_vitdet.py",
        label="ViTDet",
    )
)
register_family(
    BackboneFamily(
        name="HiViT",
        cls=HiViT,
        sizes=HIVIT_SIZES,
        architecture_fields=("embed_dim", "depths"),
        layout_fields=("pretrain_img_size", "pos_embed", "patch_size", "window_size", "global_blocks", "out_norm"),
        tiny_kwargs=dict(embed_dim=32, depths=(1, 1, 2), num_heads=2, global_blocks=(1,)),
        key="hivit",
        neck="fpn",
        size_kwargs=hivit_kwargs,
        global_blocks=_hivit_global_blocks,
        model_layout=hivit_layout,
        preset="hivit",
        detection_config="HiViT/common/mask_rcnn_hivit.py",
        token_stride=4,
    )
)
