"""Key maps from publishers' checkpoint layouts to our backbones' state dicts (plain functions, no models).

The bottom layer of :mod:`hieradet.checkpoint` above :mod:`~hieradet.checkpoint.io`: :mod:`~hieradet.checkpoint.convert`
builds on these, never the other way round; every conversion goes through its
:func:`~hieradet.checkpoint.convert.convert_state_dict`.
"""

import math
import re
from typing import Dict, List, Tuple

import torch

from .io import CheckpointError

__all__ = ["grid_from_tokens", "is_pretraining_key", "official_hivit_layout", "map_official_hivit_keys"]

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
# keys that belong to pretraining or classification only
_DROP_EXACT = ("cls_token", "dist_token", "reg_token", "mask_token")
_DROP_PREFIXES = (
    "head.",
    "head_dist.",
    "norm.",
    "fc_norm.",
    "encoder_norm.",
    "pre_logits.",
    "decoder",  # decoder_embed, decoder_blocks, decoder_norm, decoder_pred, decoder_pos_embed
    "multi_scale_fusion_heads.",
    "pred.",
)
# HiViT's Swin-style relative position bias (no decomposed-relpos equivalent) and its index buffer
_DROP_SUFFIXES = ("relative_position_bias_table", "relative_position_index")


def is_pretraining_key(key: str) -> bool:
    """Whether a source key belongs to pretraining or classification only (dropped by every conversion)."""
    return key in _DROP_EXACT or key.startswith(_DROP_PREFIXES)


def grid_from_tokens(pos_embed: torch.Tensor, num_prefix_tokens: int = 0) -> torch.Tensor:
    """(1, [prefix +] h*w, C) token embedding -> (1, C, h, w) grid (square grids only)."""
    if pos_embed.dim() != 3:
        raise ValueError(f"expected a (1, N, C) position embedding, got shape {tuple(pos_embed.shape)}")
    tokens = pos_embed[:, num_prefix_tokens:]
    side = math.isqrt(tokens.shape[1])
    if side * side != tokens.shape[1]:
        raise ValueError(f"position embedding with {tokens.shape[1]} tokens is not a square grid")
    return tokens.reshape(1, side, side, -1).permute(0, 3, 1, 2).contiguous()


def official_hivit_layout(state_dict: Dict[str, torch.Tensor]) -> Dict[str, object]:
    """Reads the architecture of an official HiViT state dict from its keys and shapes.

    Returns a dict with ``embed_dim`` (main-stage width), ``depths`` (Tab. 7 blocks per stage),
    ``main_heads`` (from the relative position bias tables, ``None`` when the checkpoint has none),
    ``pretrain_grid`` (side of the ``absolute_pos_embed`` grid, ``None`` when absent) and
    ``kinds``: for every official block index, ``"mlp"``, ``"merge"`` or ``"main"``.

    Raises:
        CheckpointError: the keys are not those of an official HiViT (no ``blocks.*``, not two merges, ...).
    """
    kinds: Dict[int, str] = {}
    for k in state_dict:
        m = _BLOCK_KEY.match(k)
        if not m:
            continue
        i, rest = int(m.group(1)), m.group(2)
        if rest.startswith("reduction."):
            kinds[i] = "merge"
        elif rest.startswith("attn."):
            kinds[i] = "main"
        else:
            kinds.setdefault(i, "mlp")
    if not kinds:
        raise CheckpointError("not an official HiViT checkpoint: it has no 'blocks.N.*' keys")
    order = [kinds.get(i) for i in range(max(kinds) + 1)]
    if None in order:
        raise CheckpointError(
            f"official HiViT checkpoint is missing block {order.index(None)} (block indexes must be dense)"
        )
    merges = [i for i, kind in enumerate(order) if kind == "merge"]
    if len(merges) != 2:
        raise CheckpointError(
            "not an official 3-stage HiViT checkpoint: expected 2 patch merges ('blocks.N.reduction'), "
            f"found {len(merges)}"
        )
    stem1, stem2, main = order[: merges[0]], order[merges[0] + 1 : merges[1]], order[merges[1] + 1 :]
    if set(stem1 + stem2) != {"mlp"} or set(main) != {"main"}:
        raise CheckpointError(
            "official HiViT block order must be MLP blocks, merge, MLP blocks, merge, attention blocks; got "
            + ",".join(k[0] for k in order)
        )
    if len(stem1) % 2 or len(stem2) % 2:
        raise CheckpointError(
            f"stem stages must have an even number of MLP blocks (2 per block), got {len(stem1)}, {len(stem2)}"
        )
    embed_dim = state_dict[f"blocks.{merges[1]}.reduction.weight"].shape[0]
    table = state_dict.get(f"blocks.{merges[1] + 1}.attn.relative_position_bias_table")
    pos = state_dict.get("absolute_pos_embed")
    grid = None
    if pos is not None:
        grid = grid_from_tokens(pos).shape[-1]
    return {
        "embed_dim": int(embed_dim),
        "depths": (len(stem1) // 2, len(stem2) // 2, len(main)),
        "main_heads": None if table is None else int(table.shape[-1]),
        "pretrain_grid": grid,
        "kinds": order,
    }


def map_official_hivit_keys(
    state_dict: Dict[str, torch.Tensor],
) -> Tuple[Dict[str, torch.Tensor], List[Tuple[str, str]], List[str], List[str]]:
    """Official HiViT (github zhangxiaosong18/hivit, MAE or classification) keys -> :class:`HiViT` keys.

    Returns ``(converted, renamed pairs, dropped keys, unknown keys)``; ``convert_state_dict(..., source="hivit")``
    keeps the unknown keys so that its check against the model refuses them (unless ``strict=False``).

    The official model keeps every layer in one flat ``blocks`` list: the MLP blocks of stem stage 1 (two per
    block of Tab. 7), a patch merge (``reduction``), the MLP blocks of stem stage 2, a second merge, then the
    main-stage transformer blocks. Our :class:`~hieradet.modeling.hivit.HiViT` keeps the stem in ``patch_embed`` (so
    layer-wise lr decay puts it at layer 0, as the authors do) and the main stage in ``blocks``:

    ==========================================  ================================================
    official                                    ours
    ==========================================  ================================================
    ``patch_embed.proj`` / ``patch_embed.norm``   ``patch_embed.proj`` / ``patch_embed.norm``
    ``blocks.i.{norm2,mlp}`` (stem stage s)       ``patch_embed.stage{s}.j.{norm,mlp}``
    ``blocks.i.{norm,reduction}`` (merge s)       ``patch_embed.merge{s}.{norm,reduction}``
    ``blocks.i.*`` (main stage)                   ``blocks.j.*`` (same sub-keys)
    ``absolute_pos_embed`` (1, 196, C)            ``pos_embed.window_embed`` (1, C, 14, 14)
    ==========================================  ================================================

    Dropped: the classifier (``fc_norm``, ``head``), MAE's encoder ``norm`` and decoder (``decoder_*``,
    ``mask_token``), the ``relative_position_index`` buffers and the Swin-style relative position *bias* tables
    (``attn.relative_position_bias_table``, (2S-1)^2 x heads). That bias is one scalar per (distance, head); our
    relative position embeddings are the decomposed, query-dependent ones of MViTv2/ViTDet, which it cannot be
    mapped to, and the detection variant (like the abs-win paper's ViTDet) puts *new*, zero-initialised relpos on
    the global blocks only, so nothing is lost that the detector would use. (The authors' own detection config also
    runs without it, ``rpe=False``, and their MAE checkpoints have none.)

    Raises:
        CheckpointError: the keys are not those of an official 3-stage HiViT (see :func:`official_hivit_layout`).
    """
    kinds: List[str] = official_hivit_layout(state_dict)["kinds"]
    prefix: Dict[int, str] = {}  # official block index -> our module prefix
    stage, counts = 1, {1: 0, 2: 0, 3: 0}
    for i, kind in enumerate(kinds):
        if kind == "merge":
            prefix[i] = f"patch_embed.merge{stage}."
            stage += 1
        else:
            prefix[i] = f"patch_embed.stage{stage}.{counts[stage]}." if kind == "mlp" else f"blocks.{counts[3]}."
            counts[stage] += 1

    out: Dict[str, torch.Tensor] = {}
    renamed: List[Tuple[str, str]] = []
    dropped, unknown = [], []
    for k, v in state_dict.items():
        if is_pretraining_key(k) or k.endswith(_DROP_SUFFIXES):
            dropped.append(k)
        elif k.startswith(("patch_embed.proj.", "patch_embed.norm.")):
            out[k] = v
        elif k == "absolute_pos_embed":
            out["pos_embed.window_embed"] = grid_from_tokens(v)
            renamed.append((k, "pos_embed.window_embed"))
        else:
            m = _BLOCK_KEY.match(k)
            rest = m.group(2) if m else ""
            if m and kinds[int(m.group(1))] == "mlp":
                if rest.startswith("norm2."):  # an attention-free block keeps only its second norm
                    rest = "norm." + rest[len("norm2.") :]
                elif not rest.startswith("mlp."):
                    m = None
            if m:
                out[prefix[int(m.group(1))] + rest] = v
                if prefix[int(m.group(1))] + rest != k:
                    renamed.append((k, prefix[int(m.group(1))] + rest))
            else:
                unknown.append(k)
    return out, renamed, dropped, unknown
