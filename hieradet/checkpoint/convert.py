"""Conversion of reference checkpoints to our backbones' weights, and the files and records it writes.

The formats themselves (how each is recognised and mapped) are the table of :mod:`hieradet.checkpoint.formats`;
:func:`convert_state_dict` detects the format, runs its converter, checks the result against a (free, meta-device)
backbone of the family it names, and records the layout. Key prefixes, classes and size tables come from the
family declarations (:mod:`hieradet.modeling.family`).

Supported sources (``SOURCE_FORMATS``) and what happens to their position embeddings: see
:mod:`hieradet.checkpoint.formats`.
"""

import inspect
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..modeling.family import families, get_family
from ..modeling.layout_record import LAYOUT_VERSION, RECORD_KEY, encode_record
from .formats import FORMATS, SOURCE_FORMATS, ConversionResult, detect_format, vit_to_abswin_vit
from .io import CheckpointError, unwrap_state_dict
from .keymaps import grid_from_tokens

__all__ = [
    "SOURCE_FORMATS",
    "ConversionResult",
    "grid_from_tokens",
    "vit_to_abswin_vit",
    "detect_format",
    "convert_state_dict",
    "build_converted_checkpoint",
    "default_prefix",
    "backbone_classes",
    "is_new_by_design",
    "config_overrides",
    "checkpoint_layout_from_conversion",
    "converted_record",
    "METADATA_KEY",
    "summarize",
]

METADATA_KEY = "__hieradet__"


def backbone_classes() -> Dict[str, type]:
    """``{arch: class}`` of the registered backbone families (:func:`hieradet.modeling.family.families`)."""
    return {fam.name: fam.cls for fam in families()}


def is_new_by_design(key: str) -> bool:
    """Whether a backbone-relative key is absent from converted checkpoints on purpose: the relative position
    tables (new, zero-initialised on the global blocks) and HiViT's output norms."""
    return key.endswith(("rel_pos_h", "rel_pos_w")) or key.startswith("out_norms.")


def _build_meta_backbone(arch: str, kwargs: Mapping[str, Any]) -> torch.nn.Module:
    cls = get_family(arch).cls
    kw = dict(kwargs)
    kw.setdefault("num_heads", 1)  # heads do not change any weight shape that comes from a checkpoint
    with torch.device("meta"):
        return cls(**kw)


def _verify_against_model(result: ConversionResult, strict: bool) -> None:
    """Checks the converted weights against a (meta-device, free) backbone built with ``backbone_kwargs``."""
    model_sd = _build_meta_backbone(result.arch, result.backbone_kwargs).state_dict()
    unexpected = [k for k in result.state_dict if k not in model_sd]
    wrong = [
        f"{k}: {tuple(v.shape)} vs {tuple(model_sd[k].shape)}"
        for k, v in result.state_dict.items()
        if k in model_sd and tuple(v.shape) != tuple(model_sd[k].shape)
    ]
    missing = [k for k in model_sd if k not in result.state_dict and k != RECORD_KEY]  # added after the check
    by_design = [k for k in missing if is_new_by_design(k)]
    other_missing = [k for k in missing if k not in by_design]
    if wrong:
        raise CheckpointError(f"converted weights do not fit a {result.arch} built from them: {wrong[:5]}")
    if other_missing:
        raise CheckpointError(
            f"the {SOURCE_FORMATS[result.source_format]} checkpoint lacks {len(other_missing)} backbone weights "
            f"(e.g. {other_missing[:5]}); is the file complete?"
        )
    if unexpected:
        source_key = {new: old for old, new in result.renamed}  # name them as the file does
        named = [source_key.get(k, k) for k in unexpected]
        if strict:
            raise CheckpointError(
                f"{len(unexpected)} keys of the {SOURCE_FORMATS[result.source_format]} checkpoint have no place in "
                f"{result.arch}: {named[:8]} (pass strict=False / --non-strict to drop them)"
            )
        for k in unexpected:
            result.state_dict.pop(k)
        result.renamed = [(old, new) for old, new in result.renamed if new not in unexpected]
        result.dropped.extend(named)
    result.new_keys = by_design


def convert_state_dict(
    checkpoint: Mapping[str, Any],
    source: str = "auto",
    pos_embed: Optional[str] = None,
    pretrain_img_size: Optional[int] = None,
    expect_size: Optional[str] = None,
    num_heads: Optional[int] = None,
    strict: bool = True,
) -> ConversionResult:
    """Converts a loaded checkpoint (any of :data:`SOURCE_FORMATS`) into backbone-relative weights.

    Args:
        checkpoint: what ``torch.load`` returned (a state dict, or one under ``model`` / ``model_state``).
        source (str): ``"auto"`` to detect, or a key of :data:`SOURCE_FORMATS` (checked against the keys).
        pos_embed (str or None): embedding mode the converted model should run in: ``"abswin"``,
            ``"abswin_single"`` or ``"interpolate"`` (the bugged baseline). ``None``: the source's natural mode
            (abswin for ImageNet-pretrained models, abswin_single for SAM 2, which was trained that way).
            The weights are the same in every mode; the mode goes into the metadata and config overrides.
        pretrain_img_size (int or None): pretraining image size when the weights do not tell
            (timm abs-win: 256, SAM 2: 1024 by default).
        expect_size (str or None): raise unless the checkpoint is this preset (e.g. ``"B"``).
        num_heads (int or None): heads of a custom-size model (not stored in the weights).
        strict (bool): raise on source keys that have no place in the backbone (else drop them).
    Raises:
        CheckpointError: unknown format, a format that does not match ``source``, a size mismatch.
    """
    from ..modeling.pos_embed import POS_EMBED_MODES

    if pos_embed == "auto":  # the source's natural mode
        pos_embed = None
    if pos_embed is not None and pos_embed not in POS_EMBED_MODES:
        raise ValueError(f"pos_embed must be one of {POS_EMBED_MODES} or None, got {pos_embed!r}")
    if source != "auto" and source not in SOURCE_FORMATS:
        raise ValueError(f"unknown source format {source!r}; choose 'auto' or one of {list(SOURCE_FORMATS)}")
    sd, _ = unwrap_state_dict(checkpoint)
    detected = detect_format(sd)
    if source != "auto" and source != detected:
        raise CheckpointError(
            f"source format {source} ({SOURCE_FORMATS[source]}) was requested but the keys look like {detected} "
            f"({SOURCE_FORMATS[detected]})"
        )
    res_args = dict(pos_embed=pos_embed, pretrain_img_size=pretrain_img_size, num_heads=num_heads)
    result = FORMATS[detected].convert(sd, res_args)
    if expect_size is not None and result.size != expect_size:
        fields = get_family(result.arch).architecture_fields
        kw = result.backbone_kwargs
        shape = ", ".join(f"{k}={tuple(kw[k]) if isinstance(kw[k], list) else kw[k]}" for k in fields)
        raise CheckpointError(
            f"size mismatch: the checkpoint is {result.arch}-{result.size or 'custom'} ({shape}), "
            f"not {result.arch}-{expect_size} as requested"
        )
    if pos_embed == "interpolate":
        result.notes.append(
            "pos_embed='interpolate' is the bugged baseline (bicubic-resize the pretraining embedding to the map); "
            + ("the original ViTDet also uses relpos='all'" if result.arch == "ViT" else "")
        )
    _verify_against_model(result, strict)
    result.state_dict[RECORD_KEY] = encode_record(converted_record(result))
    return result


def default_prefix(arch: str) -> str:
    """Key prefix of the backbone in the project's detection configs (full model keys): the family's
    :attr:`~hieradet.modeling.family.BackboneFamily.prefix`."""
    return get_family(arch).prefix


def build_converted_checkpoint(result: ConversionResult, prefix: Optional[str] = None, source_file: str = "") -> dict:
    """The dict to ``torch.save``: ``{"model": {prefix + key: tensor}, "__hieradet__": metadata}``.

    ``prefix`` defaults to :func:`default_prefix` (``backbone.bottom_up.`` for HieraDet / HiViT under an FPN,
    ``backbone.net.`` for ViT under a SimpleFeaturePyramid), so ``train.init_checkpoint`` loads it with
    exact keys; ``""`` keeps backbone-relative keys (for ``backbone.load_state_dict``).
    """
    if prefix is None:
        prefix = default_prefix(result.arch)
    if prefix and not prefix.endswith("."):
        prefix += "."
    layout, architecture = checkpoint_layout_from_conversion(result)
    meta = {
        "version": LAYOUT_VERSION,
        "kind": "converted",
        "source_format": result.source_format,
        "source_file": source_file,
        "arch": result.arch,
        "size": result.size,
        "prefix": prefix,
        "backbone_kwargs": _plain(result.backbone_kwargs),
        "embed_kwargs": _plain(result.embed_kwargs),
        "embed_shapes": {k: list(v) for k, v in result.embed_after.items()},
        "new_keys": list(result.new_keys),
        "architecture": architecture,
        "layout": layout,
    }
    model = {prefix + k: v for k, v in result.state_dict.items()}
    model[prefix + RECORD_KEY] = encode_record(converted_record(result))  # also when the caller dropped it
    return {"model": model, METADATA_KEY: meta}


def converted_record(result: ConversionResult) -> Dict[str, Any]:
    """The layout record converted weights carry inside their state dict (see
    :mod:`hieradet.modeling.layout_record`): the conversion's layout, with the weights' natural mode."""
    layout, architecture = checkpoint_layout_from_conversion(result)
    return {
        "version": LAYOUT_VERSION,
        "kind": "converted",
        "arch": result.arch,
        "source_format": result.source_format,
        "architecture": architecture,
        "layout": layout,
    }


def checkpoint_layout_from_conversion(result: ConversionResult) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(layout, architecture)`` of converted weights: what the source fixes (its natural mode, the embedding
    grids, the pretraining size, windows that line up with the pretraining tile, SAM 2's global blocks)."""
    kw = result.backbone_kwargs
    family = get_family(result.arch)
    cls = family.cls
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}
    layout: Dict[str, Any] = {"pretrain_img_size": kw["pretrain_img_size"], "pos_embed": kw["pos_embed"]}
    if result.arch == "HieraDet":
        layout.update(
            pos_embed_window=kw.get("pos_embed_window"),
            pos_embed_global=kw.get("pos_embed_global"),
            pos_embed_antialias=bool(kw.get("pos_embed_antialias", False)),
            window_size=_plain_value(kw.get("window_size", defaults["window_size"])),
        )
        if result.source_format in ("sam2", "timm_hieradet"):  # SAM 2 fixes its global blocks
            layout["global_blocks"] = _plain_value(kw["global_blocks"])
        if kw.get("expand_proj", True) is False:
            layout["expand_proj"] = False
        architecture = dict(embed_dim=kw["embed_dim"], stages=_plain_value(kw["stages"]))
    else:
        patch = kw.get("patch_size", defaults["patch_size"])
        layout.update(patch_size=patch, window_size=kw["pretrain_img_size"] // patch)  # the grid is the tile
        architecture = {k: _plain_value(kw[k]) for k in family.architecture_fields}
    return {k: _plain_value(v) for k, v in layout.items()}, architecture


def _plain_value(v: Any) -> Any:
    return [_plain_value(x) for x in v] if isinstance(v, (list, tuple)) else v


def _plain(d: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _fmt(v: Any) -> str:
    """A value in detectron2's (hydra) override syntax: ``null``, ``true``, ``[8,4,16,8]``."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    return str(v)


def config_overrides(embed_kwargs: Mapping[str, Any], module_path: str) -> List[str]:
    """``key=value`` LazyConfig command-line overrides (hydra syntax), e.g.
    ``model.backbone.bottom_up.pos_embed_window=56``, ``model.backbone.bottom_up.pos_embed_global=null``."""
    path = module_path.rstrip(".")
    return [f"{path}.{k}={_fmt(v)}" for k, v in embed_kwargs.items()]


def summarize(result: ConversionResult, prefix: str) -> List[str]:
    """Human-readable lines describing a conversion (what the CLI prints)."""
    lines = [
        f"source format : {result.source_format} ({SOURCE_FORMATS[result.source_format]})",
        f"target        : {result.arch}-{result.size or 'custom'} with keys under {prefix!r}",
        f"keys          : {len(result.state_dict)} written, {len(result.renamed)} renamed, "
        f"{len(result.dropped)} dropped, {len(result.folded)} layer-scale vectors folded, "
        f"{len(result.new_keys)} new by design (relative position tables of global blocks"
        + (", output norms)" if result.arch == "HiViT" else ")"),
    ]
    for k, shape in result.embed_before.items():
        lines.append(f"embedding in  : {k} {shape}")
    for k, shape in result.embed_after.items():
        lines.append(f"embedding out : {k} {shape}")
    if result.dropped:
        groups: Dict[str, int] = {}
        for k in result.dropped:
            parts = k.split(".")
            head = ".".join(parts[:2]) if parts[0] == "image_encoder" and len(parts) > 2 else parts[0]
            groups[head] = groups.get(head, 0) + 1
        shown = ", ".join(f"{g} ({n})" for g, n in list(groups.items())[:12])
        more = f" and {len(groups) - 12} more groups" if len(groups) > 12 else ""
        lines.append(f"dropped       : {shown}{more}")
    for a, b in result.renamed[:6]:
        lines.append(f"renamed       : {a} -> {b}")
    if len(result.renamed) > 6:
        lines.append(f"renamed       : ... {len(result.renamed) - 6} more")
    if result.new_keys:
        lines.append(f"new keys      : {', '.join(result.new_keys[:6])}{' ...' if len(result.new_keys) > 6 else ''}")
    for n in result.notes:
        lines.append(f"note          : {n}")
    return lines
