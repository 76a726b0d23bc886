"""Pretraining encoders and the detection-ready backbone file they produce.

:func:`pretrain_encoder_kwargs` gives the :class:`~hieradet.modeling.HieraDet` arguments of a sparse-MAE
encoder (mask-unit windows in stages 1-2, global stages 3-4, no relative position tables, no query
pooling before stage 4) with either position embedding:

* ``"abswin"``: an 8x8 window embedding (one mask unit) tiled + a global grid of one token per mask unit,
  interpolated (7x7 at 224 px, 2x2 at 64 px: Bolya et al. 2024, Sec. 3);
* ``"interpolate"``: the full stride-4 grid (56x56 at 224 px), as Ryali et al. 2023 pretrain; a larger image
  interpolates it (the mode of the same name in :mod:`hieradet.modeling`). ``"original"``, its name before, is
  still read.

:func:`backbone_checkpoint` turns a pretrained :class:`~hieradet.pretrain.HieraMAE` into the file
``tools/convert_checkpoint.py`` writes (``{"model": {"backbone.bottom_up." + key: tensor}, "__hieradet__":
metadata}``), so a detection config loads it with ``train.init_checkpoint`` through
:class:`~hieradet.checkpoint.HieraDetCheckpointer`; the metadata records the layout
(``pretrain_img_size``, ``pos_embed_window``, ``pos_embed_global``, ``pos_embed``) a detection config must set.
"""

from typing import Any, Dict, Optional

import torch

from ..checkpoint.convert import METADATA_KEY, ConversionResult, build_converted_checkpoint
from ..modeling.family import match_size
from ..modeling.hieradet import HIERA_SIZES, HieraDet, default_global_blocks, hieradet_kwargs, stage_ends

__all__ = [
    "POS_EMBED_TYPES",
    "pretrain_encoder_kwargs",
    "encoder_layout",
    "backbone_checkpoint",
    "MAE_SOURCE_FORMAT",
]

POS_EMBED_TYPES = ("abswin", "interpolate")
_OLD_NAMES = {"original": "interpolate"}  # configs written before the rename
MAE_SOURCE_FORMAT = "hieradet_mae"


def pretrain_encoder_kwargs(
    size: Optional[str] = None,
    img_size: int = 224,
    pos_embed_type: str = "abswin",
    mask_unit: int = 32,
    patch_stride: int = 4,
    **overrides,
) -> Dict[str, Any]:
    """HieraDet constructor arguments for sparse MAE pretraining.

    Args:
        size (str or None): a ``HIERA_SIZES`` preset, or ``None`` to give ``embed_dim`` / ``num_heads`` /
            ``stages`` in ``overrides``.
        img_size (int): pretraining image size (a multiple of ``mask_unit``).
        pos_embed_type (str): ``"abswin"`` or ``"interpolate"`` (see the module doc).
        mask_unit (int): mask-unit side in pixels.
        patch_stride (int): the stem stride.
        overrides: any other HieraDet argument (e.g. ``drop_path_rate``).
    """
    pos_embed_type = _OLD_NAMES.get(pos_embed_type, pos_embed_type)
    if pos_embed_type not in POS_EMBED_TYPES:
        raise ValueError(f"pos_embed_type must be one of {POS_EMBED_TYPES}, got {pos_embed_type!r}")
    if img_size <= 0 or img_size % mask_unit:
        raise ValueError(f"image size {img_size} is not a multiple of the {mask_unit}-px mask unit")
    if mask_unit % patch_stride or (mask_unit // patch_stride) % 2:
        raise ValueError(f"mask_unit={mask_unit} must be an even number of {patch_stride}-px tokens")
    unit = mask_unit // patch_stride
    if pos_embed_type == "abswin":
        window, glob = unit, img_size // mask_unit
    else:
        window, glob = img_size // patch_stride, None
    kw = hieradet_kwargs(size) if size is not None else {}
    kw.update(
        window_size=(unit, unit // 2, 0, 0),  # mask-unit attention in stages 1-2, global in 3-4
        global_blocks=(),
        relpos="none",
        q_pool=2,  # Ryali et al. 2023, App. A: no query pooling before the last stage during MAE
        img_size=img_size,
        pretrain_img_size=img_size,
        pos_embed="abswin",
        pos_embed_window=window,
        pos_embed_global=glob,
        patch_stride=patch_stride,
    )
    kw.update(overrides)
    return kw


def _stages(encoder: HieraDet):
    ends = list(encoder.stage_ends)
    return tuple(e - s for e, s in zip(ends, [-1] + ends[:-1]))


def encoder_layout(encoder: HieraDet, img_size: int) -> Dict[str, Any]:
    """The position-embedding fields a detection HieraDet needs for these weights (``embed_kwargs``).

    Detection runs the embedding in the recursive ``"abswin"`` mode: the pretraining-size embedding is the
    tile, and stage-3/4 windows of ``img_size / 16`` and ``img_size / 32`` tokens cover one tile each
    (14 and 7 at 224 px, the stock configs; other sizes add ``window_size``).
    """
    pe = encoder.pos_embed
    win = None if pe.window_embed is None else int(pe.window_embed.shape[-1])
    glob = None if pe.global_embed is None else int(pe.global_embed.shape[-1])
    stride = encoder.patch_embed.proj.stride[0]
    if tuple(pe.pretrain_size) != (img_size // stride, img_size // stride):
        raise ValueError(f"the encoder's embedding was built for {pe.pretrain_size} tokens, not {img_size} px")
    layout = dict(
        pretrain_img_size=int(img_size),
        pos_embed_window=win,
        pos_embed_global=glob,
        pos_embed_antialias=bool(pe.antialias),
        pos_embed="abswin",
    )
    if img_size != 224:
        unit = encoder.blocks[0].window_size or 8
        layout["window_size"] = (unit, unit // 2, img_size // (stride * 4), img_size // (stride * 8))
    return layout


def backbone_checkpoint(
    encoder: HieraDet,
    img_size: int,
    prefix: Optional[str] = None,
    source_file: str = "",
    extra: Optional[Dict[str, Any]] = None,
) -> dict:
    """The detection ``train.init_checkpoint`` file for a pretrained encoder.

    Args:
        encoder (HieraDet): the MAE encoder (``HieraMAE.encoder``).
        img_size (int): its pretraining image size.
        prefix (str or None): key prefix; default ``backbone.bottom_up.`` (the project's FPN configs).
        source_file (str): recorded in the metadata.
        extra (dict): more metadata under ``__hieradet__["mae"]`` (mask ratio, iterations, ...).
    Returns:
        ``{"model": {prefix + key: tensor}, "__hieradet__": metadata}`` (save it with ``torch.save``).
    """
    layout = encoder_layout(encoder, img_size)
    embed_dim = int(encoder.patch_embed.proj.out_channels)
    num_heads = int(encoder.blocks[0].attn.num_heads)
    stages = _stages(encoder)
    size = match_size(HIERA_SIZES, dict(embed_dim=embed_dim, stages=stages, num_heads=num_heads))
    if size is not None:
        kwargs = hieradet_kwargs(size, **layout)
    else:
        try:
            global_blocks = default_global_blocks(stages)
        except ValueError:  # stage 3 too short for three global blocks: its last block is global
            global_blocks = (stage_ends(stages)[2],)
        kwargs = dict(embed_dim=embed_dim, num_heads=num_heads, stages=stages, global_blocks=global_blocks, **layout)
    if encoder.blocks[0].mlp.fc1.out_features != 4 * embed_dim:
        kwargs["mlp_ratio"] = encoder.blocks[0].mlp.fc1.out_features / embed_dim
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in encoder.state_dict().items()}
    embed_keys = ("pos_embed.window_embed", "pos_embed.global_embed")
    result = ConversionResult(
        state_dict=state,
        source_format=MAE_SOURCE_FORMAT,
        arch="HieraDet",
        size=size,
        backbone_kwargs=kwargs,
        embed_kwargs=layout,
        embed_after={k: tuple(state[k].shape) for k in embed_keys if k in state},
    )
    ck = build_converted_checkpoint(result, prefix, source_file)
    ck[METADATA_KEY]["mae"] = dict(extra or {})
    return ck


def _is_backbone_file(obj: Any) -> bool:
    return isinstance(obj, dict) and METADATA_KEY in obj and isinstance(obj.get("model"), dict)


def load_backbone_file(path: str) -> dict:
    """Reads a file written by :func:`backbone_checkpoint` (raises ``ValueError`` on anything else)."""
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if not _is_backbone_file(obj):
        raise ValueError(f"{path} is not a HieraDet backbone checkpoint (no {METADATA_KEY!r} metadata)")
    return obj
