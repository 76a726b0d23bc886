"""The checkpoint formats the converter reads: a table of small detect / convert functions (timm's
``checkpoint_filter_fn`` style), one :class:`SourceFormat` per format.

Each format's ``detect(state_dict) -> bool`` recognises its own files and no other format's (the detectors are
mutually exclusive: :func:`detect_format` refuses a state dict that two of them claim instead of trusting an
order), and its ``convert(state_dict, options) -> ConversionResult`` maps the weights onto the backbone family it
names. A new format (or the format of a new backbone family) is one :func:`register_format` call.

=====================  ============================================================================================
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
=====================  ============================================================================================

Classifier heads, final norms, MAE decoders and mask tokens are dropped; timm's layer scale
(``ls1.gamma``/``ls2.gamma``) is folded into the preceding ``attn.proj``/``mlp.fc2`` (exact up to rounding).
"""

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from ..modeling.family import match_size
from .io import CheckpointError
from .keymaps import grid_from_tokens, is_pretraining_key, map_official_hivit_keys, official_hivit_layout

__all__ = [
    "FORMATS",
    "SOURCE_FORMATS",
    "ConversionResult",
    "SourceFormat",
    "detect_format",
    "detecting_formats",
    "register_format",
    "unregister_format",
    "fold_layer_scale",
    "block_ids",
    "vit_to_abswin_vit",
]


@dataclass
class ConversionResult:
    """What a conversion produced and did.

    Attributes:
        state_dict: backbone-relative weights for ``arch``.
        source_format: one of :data:`FORMATS`.
        arch: the backbone family (``"HieraDet"``, ``"ViT"``, ``"HiViT"``, see :mod:`hieradet.modeling.family`).
        size: preset name (``HIERA_SIZES`` / ``VIT_SIZES`` / ``HIVIT_SIZES``) or ``None`` for a custom size.
        backbone_kwargs: constructor arguments that build a backbone these weights fit exactly.
        embed_kwargs: the subset of ``backbone_kwargs`` a detection config must set for the weights'
            position-embedding layout (printed as config overrides).
        renamed: (source key, new key) pairs whose name changed.
        dropped: source keys that were dropped.
        folded: descriptions of layer-scale vectors folded into linear layers.
        embed_before / embed_after: position-embedding shapes in the source / the result.
        new_keys: backbone keys the result lacks by design (relative position tables of global blocks, HiViT's
            output norms).
        notes: anything the user should know (equivalence, recommended windows).
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


@dataclass(frozen=True)
class SourceFormat:
    """One checkpoint format.

    Args:
        name (str): the format's name (``--source-format``).
        description (str): what files it is, for messages.
        family (str): the backbone family its weights become (:func:`hieradet.modeling.family.get_family`).
        detect (callable): ``state_dict -> bool``, true for this format's files only.
        convert (callable): ``(state_dict, options) -> ConversionResult``; ``options`` holds ``pos_embed``,
            ``pretrain_img_size`` and ``num_heads`` (each None unless the user set it).
    """

    name: str
    description: str
    family: str
    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    convert: Callable[[Dict[str, torch.Tensor], Dict[str, Any]], ConversionResult]


FORMATS: Dict[str, SourceFormat] = {}
# {name: description} of FORMATS, kept in step by register_format / unregister_format
SOURCE_FORMATS: Dict[str, str] = {}


def register_format(fmt: SourceFormat) -> SourceFormat:
    """Adds ``fmt`` to the table (its ``detect`` must not claim another format's files)."""
    if fmt.name in FORMATS:
        raise ValueError(f"checkpoint format {fmt.name!r} is already registered; unregister_format() it first")
    FORMATS[fmt.name] = fmt
    SOURCE_FORMATS[fmt.name] = fmt.description
    return fmt


def unregister_format(name: str) -> None:
    """Removes the format ``name`` from the table."""
    if name not in FORMATS:
        raise KeyError(f"no checkpoint format {name!r}; registered: {list(FORMATS)}")
    del FORMATS[name], SOURCE_FORMATS[name]


# ----------------------------------------------------------------------------------------------
# shared helpers

SAM2_TRUNK = "image_encoder.trunk."
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_HIVIT_MERGE = re.compile(r"^blocks\.\d+\.reduction\.weight$")
_WINDOW_KEYS = ("pos_embed_window", "pos_embed_win", "pos_embed_abs")


def block_ids(sd: Mapping[str, torch.Tensor]) -> List[int]:
    """Sorted indices ``N`` of the ``blocks.N.*`` keys."""
    return sorted({int(m.group(1)) for k in sd for m in [_BLOCK.match(k)] if m})


def fold_layer_scale(sd: Dict[str, torch.Tensor], folded: List[str]) -> Dict[str, torch.Tensor]:
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


def _sizes(family: str) -> Mapping[str, Mapping[str, Any]]:
    from ..modeling.family import get_family

    return get_family(family).sizes


# ----------------------------------------------------------------------------------------------
# detection


def _has_sam2_trunk(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(SAM2_TRUNK) for k in sd)


def _is_hierarchical(sd: Mapping[str, torch.Tensor]) -> bool:
    """Hiera-like: the width changes somewhere along the blocks (a ViT keeps one width)."""
    if any(re.match(r"^blocks\.\d+\.proj\.weight$", k) for k in sd):
        return True
    widths = {tuple(v.shape) for k, v in sd.items() if re.match(r"^blocks\.\d+\.norm2\.weight$", k)}
    return len(widths) > 1


def _token_pos_embed(sd: Mapping[str, torch.Tensor]) -> bool:
    """A ``pos_embed`` of tokens (1, N, C) and none of the grid-embedding keys of timm abs-win / SAM 2."""
    pe = sd.get("pos_embed")
    return pe is not None and pe.dim() == 3 and not any(k in sd for k in _WINDOW_KEYS)


def _timm_like(sd: Mapping[str, torch.Tensor]) -> bool:
    return "head.fc.weight" in sd or "head.norm.weight" in sd or any(".ls1.gamma" in k for k in sd)


def _detect_mae_vit(sd):
    return _token_pos_embed(sd) and not _is_hierarchical(sd)


def _detect_hiera(sd):
    return _token_pos_embed(sd) and _is_hierarchical(sd) and not _timm_like(sd)


def _detect_timm_hiera(sd):
    return _token_pos_embed(sd) and _is_hierarchical(sd) and _timm_like(sd)


def _detect_timm_hiera_abswin(sd):
    return ("pos_embed_win" in sd or "pos_embed_abs" in sd) and "pos_embed_window" not in sd


def _sam2_mlp(sd) -> bool:
    return any(".mlp.layers.0." in k for k in sd)


def _detect_sam2(sd):
    return _has_sam2_trunk(sd) or ("pos_embed_window" in sd and _sam2_mlp(sd))


def _detect_timm_hieradet(sd):
    return "pos_embed_window" in sd and not _sam2_mlp(sd)


def _detect_hivit(sd):
    return "absolute_pos_embed" in sd and any(_HIVIT_MERGE.match(k) for k in sd)


def _refuse_unsupported(sd: Mapping[str, torch.Tensor]) -> None:
    """Raises for what no format converts: our own files, video Hiera, files without transformer blocks."""
    keys = list(sd)
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
    if "patch_embed.proj.weight" not in sd or not block_ids(sd):
        raise CheckpointError(
            "unknown checkpoint format: no `patch_embed.proj.weight` / `blocks.N.*` keys. Supported sources: "
            + "; ".join(f"{k} ({v})" for k, v in SOURCE_FORMATS.items())
            + f". First keys of this file: {keys[:6]}"
        )


def detecting_formats(state_dict: Mapping[str, torch.Tensor]) -> List[str]:
    """Names of every format whose ``detect`` claims ``state_dict`` (one for any supported file)."""
    return [name for name, fmt in FORMATS.items() if fmt.detect(state_dict)]


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Names the source format of a (unwrapped) state dict: the one entry of :data:`FORMATS` that detects it.

    Raises:
        CheckpointError: already-converted, video, or unknown checkpoints; a state dict that several formats claim.
    """
    sd = state_dict
    if not _has_sam2_trunk(sd):  # a full SAM 2 checkpoint: its trunk is checked when it is converted
        _refuse_unsupported(sd)
    found = detecting_formats(sd)
    if len(found) == 1:
        return found[0]
    if found:
        raise CheckpointError(
            f"the checkpoint's keys match several source formats ({', '.join(found)}); no file of a supported "
            "source has all of them: is it a merge of two checkpoints? Convert each source's file on its own"
        )
    pe = sd.get("pos_embed")
    shape = None if pe is None else tuple(pe.shape)
    raise CheckpointError(
        f"unknown checkpoint format: transformer blocks found but `pos_embed` is {shape}; expected (1, N, C) "
        "(MAE ViT, official Hiera) or (1, C, h, w) with `pos_embed_win` (timm abs-win) / `pos_embed_window` (SAM 2); "
        "HiViT files have `absolute_pos_embed` and `blocks.N.reduction` patch merges"
    )


# ----------------------------------------------------------------------------------------------
# Hiera-family formats: shared weights pass, per-format embedding layout


@dataclass
class _HieraWeights:
    out: Dict[str, torch.Tensor]
    window: Optional[torch.Tensor]
    glob: Optional[torch.Tensor]
    renamed: List[Tuple[str, str]]
    dropped: List[str]
    folded: List[str]
    embed_before: Dict[str, Tuple[int, ...]]

    @property
    def window_side(self) -> Optional[int]:
        return None if self.window is None else int(self.window.shape[-1])

    @property
    def global_side(self) -> Optional[int]:
        return None if self.glob is None else int(self.glob.shape[-1])


def _hiera_weights(sd: Dict[str, torch.Tensor]) -> _HieraWeights:
    """Our key names for any Hiera source: embeddings split into window / global grids, SAM 2's ``mlp.layers.N``
    renamed, pretraining-only keys dropped, layer scale folded."""
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
    out = fold_layer_scale(out, folded)
    if window is not None:
        out["pos_embed.window_embed"] = window.contiguous()
    if glob is not None:
        out["pos_embed.global_embed"] = glob.contiguous()
    return _HieraWeights(out, window, glob, renamed, dropped, folded, embed_before)


def _hiera_arch(sd: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """embed_dim, stages, mlp_ratio and patch kernel of a Hiera state dict (our key names)."""
    ids = block_ids(sd)
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


_HIERA_WINDOWS = (8, 4, 14, 7)
_WIDE_WINDOWS = (8, 4, 16, 8)  # stage-3/4 windows of 256 px: one tile of a 256-px pretraining


def _official_hiera_layout(w: _HieraWeights, size, opts) -> Tuple[Dict[str, Any], List[str], Tuple[int, ...]]:
    """official Hiera and timm's port: the full pretraining grid is the window tile."""
    win = w.window_side
    pretrain = opts["pretrain_img_size"] or win * 4
    embed = dict(pos_embed_window=win, pos_embed_global=None, pos_embed_antialias=False)
    embed.update(pretrain_img_size=pretrain, pos_embed=opts["pos_embed"] or "abswin")
    note = (
        f"the full {win}x{win} pretraining grid is the tile: with pos_embed='abswin' every "
        f"{pretrain}-px detection window (stage-3 window 14, stage-4 window 7) sees the pretrained embedding"
    )
    return embed, [note], _HIERA_WINDOWS


def _abswin_hiera_layout(w: _HieraWeights, size, opts) -> Tuple[Dict[str, Any], List[str], Tuple[int, ...]]:
    """timm abs-win Hiera: window + global grids, antialiased interpolation, 256-px pretraining."""
    pretrain = opts["pretrain_img_size"] or 256
    embed = dict(pos_embed_window=w.window_side, pos_embed_global=w.global_side, pos_embed_antialias=True)
    embed.update(pretrain_img_size=pretrain, pos_embed=opts["pos_embed"] or "abswin")
    notes = [
        "timm interpolates the global embedding with antialiased bicubic (antialias=True); SAM 2 and our "
        "default use plain bicubic, which gives different numbers, so the converted file asks for "
        "pos_embed_antialias=True"
    ]
    if pretrain == 256:
        notes.append(
            "pretrained at 256 px: window_size=(8, 4, 16, 8) makes the stage-3/4 windows 256 px wide, one "
            "pretraining tile each (with the default 14/7 they would be 224 px)"
        )
    return embed, notes, _WIDE_WINDOWS


def _sam2_layout(w: _HieraWeights, size, opts) -> Tuple[Dict[str, Any], List[str], Tuple[int, ...]]:
    """SAM 2 and timm's port of it: trained at 1024 px with a one-level window + background embedding."""
    pretrain = opts["pretrain_img_size"] or 1024
    embed = dict(pos_embed_window=w.window_side, pos_embed_global=w.global_side, pos_embed_antialias=False)
    embed.update(pretrain_img_size=pretrain, pos_embed=opts["pos_embed"] or "abswin_single")
    notes = [
        "SAM 2 adds tile(pos_embed_window) + bicubic(pos_embed) at the full map: pos_embed='abswin_single' "
        "reproduces it at every input size; with relpos='none' (SAM 2 has no relative position embeddings) "
        "and SAM 2's window_size/global_blocks the trunk outputs are the same. relpos='global' (our default) "
        "adds zero-initialised tables, a no-op until fine-tuned"
    ]
    return embed, notes, _WIDE_WINDOWS if size == "L" else _HIERA_WINDOWS


def _timm_hieradet_layout(w: _HieraWeights, size, opts) -> Tuple[Dict[str, Any], List[str], Tuple[int, ...]]:
    embed, notes, windows = _sam2_layout(w, size, opts)
    if any(".ls1.gamma" in f for f in w.folded):
        notes.append("layer scale found: assuming timm's hieradet_small (window_spec 8,4,16,8)")
        windows = _WIDE_WINDOWS
    return embed, notes, windows


def _hiera_converter(fmt: str, layout: Callable) -> Callable[[Dict[str, torch.Tensor], Dict[str, Any]], Any]:
    """The ``convert`` of a Hiera-family format: the shared weights pass, the format's embedding ``layout``
    (``(weights, size, options) -> (embed kwargs, notes, windows)``), then the HieraDet constructor arguments."""

    def convert(sd: Dict[str, torch.Tensor], opts: Dict[str, Any]) -> ConversionResult:
        from ..modeling.hieradet import default_global_blocks, hieradet_kwargs, stage_ends

        w = _hiera_weights(sd)
        out = w.out
        embed_after = {k: tuple(out[k].shape) for k in ("pos_embed.window_embed", "pos_embed.global_embed") if k in out}
        arch = _hiera_arch(out)
        size = match_size(_sizes("HieraDet"), dict(embed_dim=arch["embed_dim"], stages=arch["stages"]))
        embed, notes, windows = layout(w, size, opts)
        if windows != _HIERA_WINDOWS:
            embed["window_size"] = windows
        if not arch["expand_proj"]:  # timm's use_expand_proj=False (hiera_small_abswin_256)
            embed["expand_proj"] = False
            notes.append(
                "stage transitions widen without a projection (max and mean pool concatenated): expand_proj=False"
            )
        if size is not None:
            kwargs = hieradet_kwargs(size, **embed)
        else:
            try:
                global_blocks = default_global_blocks(arch["stages"])
            except ValueError:  # stage 3 too short for three global blocks: make its last block global
                global_blocks = (stage_ends(arch["stages"])[2],)
            kwargs = dict(embed_dim=arch["embed_dim"], stages=arch["stages"], global_blocks=global_blocks, **embed)
            if opts.get("num_heads"):
                kwargs["num_heads"] = opts["num_heads"]
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
            renamed=w.renamed,
            dropped=w.dropped,
            folded=w.folded,
            embed_before=w.embed_before,
            embed_after=embed_after,
            notes=notes,
        )

    return convert


_convert_sam2_trunk = _hiera_converter("sam2", _sam2_layout)


def _convert_sam2(sd: Dict[str, torch.Tensor], opts: Dict[str, Any]) -> ConversionResult:
    """SAM 2: the trunk of a full checkpoint (``image_encoder.trunk.*``; the rest is dropped), or a bare trunk."""
    if not _has_sam2_trunk(sd):
        return _convert_sam2_trunk(sd, opts)
    trunk = {k[len(SAM2_TRUNK) :]: v for k, v in sd.items() if k.startswith(SAM2_TRUNK)}
    result = _convert_sam2_trunk(trunk, opts)
    result.dropped = [k for k in sd if not k.startswith(SAM2_TRUNK)] + result.dropped
    result.renamed = [(SAM2_TRUNK + a, b) for a, b in result.renamed]
    result.notes.insert(0, f"kept the {len(trunk)} image_encoder.trunk.* weights of a full SAM 2 checkpoint")
    return result


# ----------------------------------------------------------------------------------------------
# plain ViT and HiViT


def _convert_mae_vit(sd: Dict[str, torch.Tensor], opts: Dict[str, Any]) -> ConversionResult:
    from ..modeling.vit import vit_kwargs

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
    out = fold_layer_scale(out, folded)
    grid = int(out["pos_embed.window_embed"].shape[-1])
    patch = out["patch_embed.proj.weight"]
    patch_size = int(patch.shape[-1])
    embed_dim, depth = int(patch.shape[0]), len(block_ids(out))
    size = match_size(_sizes("ViT"), dict(embed_dim=embed_dim, depth=depth))
    notes = [
        f"the {grid}x{grid} pretraining grid is the tile"
        + (" (cls-token slot dropped)" if prefix_tokens else "")
        + f": with pos_embed='abswin' every {grid}x{grid} window sees exactly the pretrained embedding"
    ]
    embed: Dict[str, Any] = dict(pretrain_img_size=grid * patch_size, pos_embed=opts["pos_embed"] or "abswin")
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
            num_heads=opts.get("num_heads") or max(1, embed_dim // 64),
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


def _convert_hivit(sd: Dict[str, torch.Tensor], opts: Dict[str, Any]) -> ConversionResult:
    from ..modeling.hivit import hivit_kwargs

    layout = official_hivit_layout(sd)
    out, renamed, dropped, unknown = map_official_hivit_keys(sd)
    out.update({k: sd[k] for k in unknown})  # kept under their names: the check against the model refuses them
    embed_dim, depths = layout["embed_dim"], tuple(layout["depths"])
    grid = int(out["pos_embed.window_embed"].shape[-1])
    patch_size = 4 * int(out["patch_embed.proj.weight"].shape[-1])  # stride-4 stem, two 2x2 merges
    size = match_size(_sizes("HiViT"), dict(embed_dim=embed_dim, depths=depths))
    heads = opts.get("num_heads") or layout["main_heads"]
    embed: Dict[str, Any] = dict(
        pretrain_img_size=opts["pretrain_img_size"] or grid * patch_size,
        pos_embed=opts["pos_embed"] or "abswin",
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


# ----------------------------------------------------------------------------------------------
# the table

for _fmt in (
    SourceFormat("mae_vit", "MAE / timm / detectron2 ViT", "ViT", _detect_mae_vit, _convert_mae_vit),
    SourceFormat(
        "hiera",
        "official Hiera (hiera-transformer)",
        "HieraDet",
        _detect_hiera,
        _hiera_converter("hiera", _official_hiera_layout),
    ),
    SourceFormat(
        "timm_hiera",
        "timm Hiera (hiera_*_224)",
        "HieraDet",
        _detect_timm_hiera,
        _hiera_converter("timm_hiera", _official_hiera_layout),
    ),
    SourceFormat(
        "timm_hiera_abswin",
        "timm abs-win Hiera (hiera_*_abswin_256)",
        "HieraDet",
        _detect_timm_hiera_abswin,
        _hiera_converter("timm_hiera_abswin", _abswin_hiera_layout),
    ),
    SourceFormat("sam2", "SAM 2 image encoder trunk", "HieraDet", _detect_sam2, _convert_sam2),
    SourceFormat(
        "timm_hieradet",
        "timm SAM 2 trunk port (sam2_hiera_*, hieradet_small)",
        "HieraDet",
        _detect_timm_hieradet,
        _hiera_converter("timm_hieradet", _timm_hieradet_layout),
    ),
    SourceFormat("hivit", "official HiViT (zhangxiaosong18/hivit)", "HiViT", _detect_hivit, _convert_hivit),
):
    register_format(_fmt)
del _fmt
