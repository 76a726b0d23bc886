"""Key and position-embedding remapping from reference checkpoints to our backbones.

Kept apart from the models (timm's ``checkpoint_filter_fn`` style): each function takes a source
state dict and returns one for the matching backbone here, with backbone-relative keys.

Supported sources (``SOURCE_FORMATS``) and what happens to their position embeddings:

``mae_vit``            MAE / timm / detectron2 ViT: ``pos_embed`` (1, [1 +] h*w, C) -> the cls slot is dropped and
                       the h x w grid becomes ``pos_embed.window_embed`` (tiled by the fixed ViTDet).
``hiera``              official Hiera (``hiera-transformer``, classification or MAE): ``pos_embed`` (1, 56*56, C)
                       -> a 56x56 ``window_embed`` (``pos_embed_window=56, pos_embed_global=None``).
``timm_hiera``         timm's port of it (``hiera_*_224``): same, with timm's layer scale folded in.
``timm_hiera_abswin``  timm abs-win Hiera (``hiera_*_abswin_256``): ``pos_embed`` (1, C, g, g) ->
                       ``global_embed``, ``pos_embed_win`` (1, C, 8, 8) -> ``window_embed``; both kept as parameters.
                       timm interpolates the global grid with antialiased bicubic: ``pos_embed_antialias=True``.
``sam2``               SAM 2 image encoder (``image_encoder.trunk.*`` of a SAM 2 checkpoint, or a bare trunk):
                       ``pos_embed`` (1, C, b, b) -> ``global_embed``, ``pos_embed_window`` -> ``window_embed``.
``timm_hieradet``      timm's port of the SAM 2 trunk (``sam2_hiera_*``, ``hieradet_small``): as ``sam2``.
``hivit``              official HiViT (github zhangxiaosong18/hivit, MAE or classification): ``absolute_pos_embed``
                       (1, 14*14, C) -> ``window_embed``; the flat ``blocks`` list is split into the stem
                       (``patch_embed``) and the main stage, see
                       :func:`~hieradet.checkpoint.keymaps.map_official_hivit_keys`.

Classifier heads, final norms, MAE decoders and mask tokens are dropped; timm's layer scale
(``ls1.gamma``/``ls2.gamma``) is folded into the preceding ``attn.proj``/``mlp.fc2`` (exact up to rounding).
"""

import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..modeling.layout_record import LAYOUT_VERSION, RECORD_KEY, encode_record
from .io import CheckpointError, unwrap_state_dict
from .keymaps import grid_from_tokens, is_pretraining_key, map_official_hivit_keys, official_hivit_layout

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

SOURCE_FORMATS = {
    "mae_vit": "MAE / timm / detectron2 ViT",
    "hiera": "official Hiera (hiera-transformer)",
    "timm_hiera": "timm Hiera (hiera_*_224)",
    "timm_hiera_abswin": "timm abs-win Hiera (hiera_*_abswin_256)",
    "sam2": "SAM 2 image encoder trunk",
    "timm_hieradet": "timm SAM 2 trunk port (sam2_hiera_*, hieradet_small)",
    "hivit": "official HiViT (zhangxiaosong18/hivit)",
}

_SAM2_TRUNK = "image_encoder.trunk."
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_HIVIT_MERGE = re.compile(r"^blocks\.\d+\.reduction\.weight$")


def backbone_classes() -> Dict[str, type]:
    """``{arch: class}`` of the backbones converted checkpoints are made for (``ConversionResult.arch``)."""
    from ..modeling.hieradet import HieraDet
    from ..modeling.hivit import HiViT
    from ..modeling.vit import ViT

    return {"HieraDet": HieraDet, "ViT": ViT, "HiViT": HiViT}


def is_new_by_design(key: str) -> bool:
    """Whether a backbone-relative key is absent from converted checkpoints on purpose: the relative position
    tables (new, zero-initialised on the global blocks) and HiViT's output norms."""
    return key.endswith(("rel_pos_h", "rel_pos_w")) or key.startswith("out_norms.")


@dataclass
class ConversionResult:
    """What a conversion produced and did.

    Attributes:
        state_dict: backbone-relative weights for ``arch``.
        source_format: one of :data:`SOURCE_FORMATS`.
        arch: ``"HieraDet"`` or ``"ViT"``.
        size: preset name (``HIERA_SIZES`` / ``VIT_SIZES``) or ``None`` for a custom size.
        backbone_kwargs: constructor arguments that build a backbone these weights fit exactly.
        embed_kwargs: the subset of ``backbone_kwargs`` a detection config must set for the weights'
            position-embedding layout (printed as config overrides).
        renamed: (source key, new key) pairs whose name changed.
        dropped: source keys that were dropped.
        folded: descriptions of layer-scale vectors folded into linear layers.
        embed_before / embed_after: position-embedding shapes in the source / the result.
        new_keys: backbone keys the result lacks by design (relative position tables of global blocks).
        notes: anything the user should know (equivalence, recommended windows).

    ``arch`` is ``"HieraDet"``, ``"ViT"`` or ``"HiViT"``; ``new_keys`` also lists HiViT's output norms.
    """

    state_dict: Dict[str, torch.Tensor]
    source_format: str
    arch: str
    size: Optional[str]
    backbone_kwargs: Dict[str, Any]
    embed_kwargs: Dict[str, Any]
    renamed: List[Tuple[str, str]] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)
    folded: List[str] = field(default_factory=list)
    embed_before: Dict[str, Tuple[int, ...]] = field(default_factory=dict)
    embed_after: Dict[str, Tuple[int, ...]] = field(default_factory=dict)
    new_keys: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def vit_to_abswin_vit(state_dict: Dict[str, torch.Tensor], has_cls_token: bool = True) -> Dict[str, torch.Tensor]:
    """MAE / detectron2 ViT weights -> :class:`ViT` weights: the pretrained grid becomes the window tile."""
    out = {}
    for k, v in state_dict.items():
        if is_pretraining_key(k):
            continue
        if k == "pos_embed":
            out["pos_embed.window_embed"] = grid_from_tokens(v, 1 if has_cls_token else 0)
        else:
            out[k] = v
    return out


# ----------------------------------------------------------------------------------------------
# format detection


def _block_ids(sd: Mapping[str, torch.Tensor]) -> List[int]:
    return sorted({int(m.group(1)) for k in sd for m in [_BLOCK.match(k)] if m})


def _is_hierarchical(sd: Mapping[str, torch.Tensor]) -> bool:
    """Hiera-like: the width changes somewhere along the blocks (a ViT keeps one width)."""
    if any(re.match(r"^blocks\.\d+\.proj\.weight$", k) for k in sd):
        return True
    widths = {tuple(v.shape) for k, v in sd.items() if re.match(r"^blocks\.\d+\.norm2\.weight$", k)}
    return len(widths) > 1


def _select_sam2_trunk(sd: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    if not any(k.startswith(_SAM2_TRUNK) for k in sd):
        return sd, []
    trunk = {k[len(_SAM2_TRUNK) :]: v for k, v in sd.items() if k.startswith(_SAM2_TRUNK)}
    return trunk, [k for k in sd if not k.startswith(_SAM2_TRUNK)]


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Names the source format of a (unwrapped) state dict; see :data:`SOURCE_FORMATS`.

    Raises:
        CheckpointError: already-converted, video, or unknown checkpoints.
    """
    sd = state_dict
    keys = list(sd)
    if any(k.startswith(_SAM2_TRUNK) for k in keys):
        return "sam2"
    if any(k.endswith(("pos_embed.window_embed", "pos_embed.global_embed")) for k in keys):
        raise CheckpointError(
            "this checkpoint is already in hieradet's format (it has pos_embed.window_embed/global_embed keys); "
            "load it directly, e.g. train.init_checkpoint=<file>, instead of converting it again"
        )
    if "pos_embed_spatial" in sd or "pos_embed_temporal" in sd:
        raise CheckpointError(
            "this is a video Hiera checkpoint (separate spatial/temporal position embeddings, e.g. hiera_*_16x224); "
            "only image checkpoints can be converted"
        )
    if "patch_embed.proj.weight" not in sd or not _block_ids(sd):
        raise CheckpointError(
            "unknown checkpoint format: no `patch_embed.proj.weight` / `blocks.N.*` keys. Supported sources: "
            + "; ".join(f"{k} ({v})" for k, v in SOURCE_FORMATS.items())
            + f". First keys of this file: {keys[:6]}"
        )
    if "absolute_pos_embed" in sd and any(_HIVIT_MERGE.match(k) for k in keys):
        return "hivit"
    if "pos_embed_window" in sd:
        return "sam2" if any(".mlp.layers.0." in k for k in keys) else "timm_hieradet"
    if "pos_embed_win" in sd or "pos_embed_abs" in sd:
        return "timm_hiera_abswin"
    pe = sd.get("pos_embed")
    if pe is not None and pe.dim() == 3:
        if _is_hierarchical(sd):
            timm_like = "head.fc.weight" in sd or "head.norm.weight" in sd or any(".ls1.gamma" in k for k in keys)
            return "timm_hiera" if timm_like else "hiera"
        return "mae_vit"
    shape = None if pe is None else tuple(pe.shape)
    raise CheckpointError(
        f"unknown checkpoint format: transformer blocks found but `pos_embed` is {shape}; expected (1, N, C) "
        "(MAE ViT, official Hiera) or (1, C, h, w) with `pos_embed_win` (timm abs-win) / `pos_embed_window` (SAM 2); "
        "HiViT files have `absolute_pos_embed` and `blocks.N.reduction` patch merges"
    )


# ----------------------------------------------------------------------------------------------
# conversion


def _fold_layer_scale(sd: Dict[str, torch.Tensor], folded: List[str]) -> Dict[str, torch.Tensor]:
    """``x + ls(f(x))`` with ``ls = diag(gamma)`` equals ``x + f'(x)`` with gamma multiplied into f's last linear."""
    out = dict(sd)
    for k in [k for k in sd if k.endswith((".ls1.gamma", ".ls2.gamma"))]:
        gamma = out.pop(k)
        block = k.rsplit(".", 2)[0]
        target = f"{block}.attn.proj" if k.endswith(".ls1.gamma") else f"{block}.mlp.fc2"
        w = out.get(f"{target}.weight")
        if w is None or w.shape[0] != gamma.shape[0]:
            raise CheckpointError(f"cannot fold layer scale {k} {tuple(gamma.shape)}: no matching {target}.weight")
        out[f"{target}.weight"] = w * gamma[:, None].to(w.dtype)
        if f"{target}.bias" in out:
            out[f"{target}.bias"] = out[f"{target}.bias"] * gamma.to(w.dtype)
        folded.append(f"{k} -> {target}")
    return out


def _hiera_arch(sd: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """embed_dim, stages, mlp_ratio and patch kernel of a Hiera state dict (our key names)."""
    ids = _block_ids(sd)
    if ids != list(range(len(ids))):
        raise CheckpointError(f"Hiera checkpoint has non-contiguous blocks {ids[:5]}...; is the file complete?")
    stages, count, widen = [], 0, {}
    for i in ids:
        d_in = sd[f"blocks.{i}.norm1.weight"].shape[0]
        d_out = sd[f"blocks.{i}.norm2.weight"].shape[0]
        if d_in != d_out and count:
            stages.append(count)
            count = 0
            widen[i] = f"blocks.{i}.proj.weight" in sd
            if not widen[i] and d_out != 2 * d_in:
                raise CheckpointError(
                    f"block {i} widens {d_in} -> {d_out} without a `blocks.{i}.proj` projection; timm's "
                    "use_expand_proj=False (max/avg-pool concatenation) can only double the width"
                )
        count += 1
    stages.append(count)
    if len(set(widen.values())) > 1:
        raise CheckpointError(
            f"stage transitions {[i for i, p in widen.items() if p]} have a `proj` projection but "
            f"{[i for i, p in widen.items() if not p]} do not (timm's use_expand_proj=False); a Hiera widens all "
            "its stages the same way: is the file complete?"
        )
    patch = sd["patch_embed.proj.weight"]
    return dict(
        embed_dim=int(patch.shape[0]),
        stages=tuple(stages),
        expand_proj=all(widen.values()),
        mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / sd["blocks.0.norm2.weight"].shape[0],
        patch_kernel=int(patch.shape[-1]),
    )


def _match_size(presets: Mapping[str, Mapping[str, Any]], **fields) -> Optional[str]:
    for name, preset in presets.items():
        if all(tuple(preset[k]) == tuple(v) if isinstance(v, tuple) else preset[k] == v for k, v in fields.items()):
            return name
    return None


def _convert_hiera(sd: Dict[str, torch.Tensor], fmt: str, res_args: Dict[str, Any]) -> ConversionResult:
    from ..modeling.hieradet import HIERA_SIZES, default_global_blocks, hieradet_kwargs, stage_ends

    renamed, dropped, folded = [], [], []
    embed_before: Dict[str, Tuple[int, ...]] = {}
    out: Dict[str, torch.Tensor] = {}
    window = glob = None
    for k, v in sd.items():
        if k in ("pos_embed", "pos_embed_abs", "pos_embed_win", "pos_embed_window"):
            embed_before[k] = tuple(v.shape)
            if v.dim() == 3:  # official / timm Hiera: (1, h*w, C), the full pretraining grid
                window = grid_from_tokens(v)
                renamed.append((k, "pos_embed.window_embed"))
            elif k in ("pos_embed_win", "pos_embed_window"):
                window = v
                renamed.append((k, "pos_embed.window_embed"))
            else:
                glob = v
                renamed.append((k, "pos_embed.global_embed"))
            continue
        if is_pretraining_key(k):
            dropped.append(k)
            continue
        new = k.replace(".mlp.layers.0.", ".mlp.fc1.").replace(".mlp.layers.1.", ".mlp.fc2.")
        if new != k:
            renamed.append((k, new))
        out[new] = v
    if window is None and glob is None:
        raise CheckpointError("Hiera checkpoint without a position embedding (`pos_embed`)")
    out = _fold_layer_scale(out, folded)
    if window is not None:
        out["pos_embed.window_embed"] = window.contiguous()
    if glob is not None:
        out["pos_embed.global_embed"] = glob.contiguous()
    embed_after = {k: tuple(out[k].shape) for k in ("pos_embed.window_embed", "pos_embed.global_embed") if k in out}

    arch = _hiera_arch(out)
    size = _match_size(HIERA_SIZES, embed_dim=arch["embed_dim"], stages=arch["stages"])
    notes: List[str] = []
    win_side = None if window is None else int(window.shape[-1])
    glob_side = None if glob is None else int(glob.shape[-1])
    if fmt in ("hiera", "timm_hiera"):
        pretrain = res_args["pretrain_img_size"] or win_side * 4
        embed = dict(pos_embed_window=win_side, pos_embed_global=None, pos_embed_antialias=False)
        mode = res_args["pos_embed"] or "abswin"
        notes.append(
            f"the full {win_side}x{win_side} pretraining grid is the tile: with pos_embed='abswin' every "
            f"{pretrain}-px detection window (stage-3 window 14, stage-4 window 7) sees the pretrained embedding"
        )
    elif fmt == "timm_hiera_abswin":
        pretrain = res_args["pretrain_img_size"] or 256
        embed = dict(pos_embed_window=win_side, pos_embed_global=glob_side, pos_embed_antialias=True)
        mode = res_args["pos_embed"] or "abswin"
        notes.append(
            "timm interpolates the global embedding with antialiased bicubic (antialias=True); SAM 2 and our "
            "default use plain bicubic, which gives different numbers, so the converted file asks for "
            "pos_embed_antialias=True"
        )
    else:  # sam2, timm_hieradet: trained at 1024 px with a one-level window + background embedding
        pretrain = res_args["pretrain_img_size"] or 1024
        embed = dict(pos_embed_window=win_side, pos_embed_global=glob_side, pos_embed_antialias=False)
        mode = res_args["pos_embed"] or "abswin_single"
        notes.append(
            "SAM 2 adds tile(pos_embed_window) + bicubic(pos_embed) at the full map: pos_embed='abswin_single' "
            "reproduces it at every input size; with relpos='none' (SAM 2 has no relative position embeddings) "
            "and SAM 2's window_size/global_blocks the trunk outputs are the same. relpos='global' (our default) "
            "adds zero-initialised tables, a no-op until fine-tuned"
        )
    embed.update(pretrain_img_size=pretrain, pos_embed=mode)

    # stage-3/4 windows: cover one pretraining tile when the tile is 224 or 256 px
    windows = (8, 4, 14, 7)
    if fmt == "timm_hiera_abswin" or (fmt in ("sam2", "timm_hieradet") and size == "L"):
        windows = (8, 4, 16, 8)
    if fmt == "timm_hieradet" and any(".ls1.gamma" in f for f in folded):
        windows = (8, 4, 16, 8)
        notes.append("layer scale found: assuming timm's hieradet_small (window_spec 8,4,16,8)")
    if pretrain == 256 and fmt == "timm_hiera_abswin":
        notes.append(
            "pretrained at 256 px: window_size=(8, 4, 16, 8) makes the stage-3/4 windows 256 px wide, one "
            "pretraining tile each (with the default 14/7 they would be 224 px)"
        )
    if windows != (8, 4, 14, 7):
        embed["window_size"] = windows
    if not arch["expand_proj"]:  # timm's use_expand_proj=False (hiera_small_abswin_256)
        embed["expand_proj"] = False
        notes.append("stage transitions widen without a projection (max and mean pool concatenated): expand_proj=False")

    if size is not None:
        kwargs = hieradet_kwargs(size, **embed)
    else:
        try:
            global_blocks = default_global_blocks(arch["stages"])
        except ValueError:  # stage 3 too short for three global blocks: make its last block global
            global_blocks = (stage_ends(arch["stages"])[2],)
        kwargs = dict(embed_dim=arch["embed_dim"], stages=arch["stages"], global_blocks=global_blocks, **embed)
        if res_args.get("num_heads"):
            kwargs["num_heads"] = res_args["num_heads"]
        else:
            notes.append("custom Hiera size: num_heads is not stored in the weights, set it in the config")
    if arch["mlp_ratio"] != 4.0:
        kwargs["mlp_ratio"] = arch["mlp_ratio"]
    if arch["patch_kernel"] != 7:
        kwargs["patch_kernel"] = arch["patch_kernel"]
    return ConversionResult(
        state_dict=out,
        source_format=fmt,
        arch="HieraDet",
        size=size,
        backbone_kwargs=kwargs,
        embed_kwargs=embed,
        renamed=renamed,
        dropped=dropped,
        folded=folded,
        embed_before=embed_before,
        embed_after=embed_after,
        notes=notes,
    )


def _convert_vit(sd: Dict[str, torch.Tensor], res_args: Dict[str, Any]) -> ConversionResult:
    from ..modeling.vit import VIT_SIZES, vit_kwargs

    renamed, dropped, folded = [], [], []
    out: Dict[str, torch.Tensor] = {}
    pe = sd["pos_embed"]
    n = pe.shape[1]
    if math.isqrt(n) ** 2 == n:
        prefix_tokens = 0
    elif math.isqrt(n - 1) ** 2 == n - 1:
        prefix_tokens = 1
    else:
        raise CheckpointError(f"ViT pos_embed {tuple(pe.shape)}: {n} tokens is neither h*w nor 1 + h*w")
    for k, v in sd.items():
        if k == "pos_embed":
            out["pos_embed.window_embed"] = grid_from_tokens(v, prefix_tokens)
            renamed.append((k, "pos_embed.window_embed"))
        elif is_pretraining_key(k):
            dropped.append(k)
        else:
            out[k] = v
    out = _fold_layer_scale(out, folded)
    grid = int(out["pos_embed.window_embed"].shape[-1])
    patch = out["patch_embed.proj.weight"]
    patch_size = int(patch.shape[-1])
    embed_dim, depth = int(patch.shape[0]), len(_block_ids(out))
    size = _match_size(VIT_SIZES, embed_dim=embed_dim, depth=depth)
    notes = [
        f"the {grid}x{grid} pretraining grid is the tile"
        + (" (cls-token slot dropped)" if prefix_tokens else "")
        + f": with pos_embed='abswin' every {grid}x{grid} window sees exactly the pretrained embedding"
    ]
    embed: Dict[str, Any] = dict(pretrain_img_size=grid * patch_size, pos_embed=res_args["pos_embed"] or "abswin")
    if grid != 14:
        embed["window_size"] = grid
    if patch_size != 16:
        embed["patch_size"] = patch_size
    if size is not None:
        kwargs = vit_kwargs(size, **embed)
    else:
        q = depth // 4 if depth >= 4 else 1
        kwargs = dict(
            embed_dim=embed_dim,
            depth=depth,
            num_heads=res_args.get("num_heads") or max(1, embed_dim // 64),
            global_blocks=tuple(range(q - 1, depth, q)),
            **embed,
        )
        notes.append(
            f"custom ViT size: assumed num_heads={kwargs['num_heads']} (64 channels per head) and global blocks "
            f"{kwargs['global_blocks']}; set them in the config if they differ"
        )
    return ConversionResult(
        state_dict=out,
        source_format="mae_vit",
        arch="ViT",
        size=size,
        backbone_kwargs=kwargs,
        embed_kwargs=embed,
        renamed=renamed,
        dropped=dropped,
        folded=folded,
        embed_before={"pos_embed": tuple(pe.shape)},
        embed_after={"pos_embed.window_embed": tuple(out["pos_embed.window_embed"].shape)},
        notes=notes,
    )


def _convert_hivit(sd: Dict[str, torch.Tensor], res_args: Dict[str, Any]) -> ConversionResult:
    from ..modeling.hivit import HIVIT_SIZES, hivit_kwargs

    layout = official_hivit_layout(sd)
    out, renamed, dropped, unknown = map_official_hivit_keys(sd)
    out.update({k: sd[k] for k in unknown})  # kept under their names: the check against the model refuses them
    embed_dim, depths = layout["embed_dim"], tuple(layout["depths"])
    grid = int(out["pos_embed.window_embed"].shape[-1])
    patch_size = 4 * int(out["patch_embed.proj.weight"].shape[-1])  # stride-4 stem, two 2x2 merges
    size = _match_size(HIVIT_SIZES, embed_dim=embed_dim, depths=depths)
    heads = res_args.get("num_heads") or layout["main_heads"]
    embed: Dict[str, Any] = dict(
        pretrain_img_size=res_args["pretrain_img_size"] or grid * patch_size,
        pos_embed=res_args["pos_embed"] or "abswin",
    )
    if patch_size != 16:
        embed["patch_size"] = patch_size
    notes = [
        f"the {grid}x{grid} absolute_pos_embed grid is the tile: with pos_embed='abswin' every {grid}x{grid} "
        f"main-stage window ({grid * patch_size} px) sees exactly the pretrained embedding"
    ]
    if any(k.endswith("relative_position_bias_table") for k in dropped):
        notes.append(
            "dropped the Swin-style relative position bias tables (one scalar per distance and head: no decomposed "
            "relpos equivalent); the global blocks get new, zero-initialised relpos, as in the authors' detection "
            "config (rpe=False)"
        )
    if size is not None:
        kwargs = hivit_kwargs(size, **embed)
    else:
        kwargs = dict(embed_dim=embed_dim, depths=depths, **embed)
        if heads is None:
            notes.append("custom HiViT size without relative position tables: set num_heads in the config")
    if heads is not None:
        kwargs["num_heads"] = heads
    for name, key, width, default in (
        ("mlp_ratio", "blocks.0.mlp.fc1.weight", embed_dim, 4.0),
        ("stem_mlp_ratio", "patch_embed.stage1.0.mlp.fc1.weight", embed_dim // 4, 3.0),
    ):
        if key in out and out[key].shape[0] != default * width:  # (a missing key is reported by the model check)
            kwargs[name] = out[key].shape[0] / width
    return ConversionResult(
        state_dict=out,
        source_format="hivit",
        arch="HiViT",
        size=size,
        backbone_kwargs=kwargs,
        embed_kwargs=embed,
        renamed=renamed,
        dropped=dropped,
        embed_before={"absolute_pos_embed": tuple(sd["absolute_pos_embed"].shape)},
        embed_after={"pos_embed.window_embed": tuple(out["pos_embed.window_embed"].shape)},
        notes=notes,
    )


def _build_meta_backbone(arch: str, kwargs: Mapping[str, Any]) -> torch.nn.Module:
    cls = backbone_classes()[arch]
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
    sd, outside = _select_sam2_trunk(sd)
    res_args = dict(pos_embed=pos_embed, pretrain_img_size=pretrain_img_size, num_heads=num_heads)
    if detected == "mae_vit":
        result = _convert_vit(sd, res_args)
    elif detected == "hivit":
        result = _convert_hivit(sd, res_args)
    else:
        result = _convert_hiera(sd, detected, res_args)
    if outside:
        result.dropped = outside + result.dropped
        result.renamed = [(_SAM2_TRUNK + a, b) for a, b in result.renamed]
        result.notes.insert(0, f"kept the {len(sd)} image_encoder.trunk.* weights of a full SAM 2 checkpoint")
    if expect_size is not None and result.size != expect_size:
        shape = (
            f"embed_dim={result.backbone_kwargs['embed_dim']}, "
            + (f"stages={result.backbone_kwargs['stages']}" if result.arch == "HieraDet" else "")
            + (f"depth={result.backbone_kwargs['depth']}" if result.arch == "ViT" else "")
            + (f"depths={tuple(result.backbone_kwargs['depths'])}" if result.arch == "HiViT" else "")
        )
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
    """Key prefix of the backbone in the project's detection configs (full model keys)."""
    return {"HieraDet": "backbone.bottom_up.", "HiViT": "backbone.bottom_up.", "ViT": "backbone.net."}[arch]


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
    cls = backbone_classes()[result.arch]
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
        key = "depth" if result.arch == "ViT" else "depths"
        architecture = {"embed_dim": kw["embed_dim"], key: _plain_value(kw[key])}
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
