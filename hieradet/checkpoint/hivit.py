"""Official HiViT checkpoints (github zhangxiaosong18/hivit: MAE pretraining or classification) -> :class:`HiViT`.

The official model keeps every layer in one flat ``blocks`` list: the MLP blocks of stem stage 1 (two per block of
Tab. 7), a patch merge (``reduction``), the MLP blocks of stem stage 2, a second merge, then the main-stage
transformer blocks. Our :class:`~hieradet.modeling.hivit.HiViT` keeps the stem in ``patch_embed`` (so layer-wise lr
decay puts it at layer 0, as the authors do) and the main stage in ``blocks``:

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
relative position embeddings are the decomposed, query-dependent ones of MViTv2/ViTDet, which it cannot be mapped
to, and the detection variant (like the abs-win paper's ViTDet) puts *new*, zero-initialised relpos on the global
blocks only, so nothing is lost that the detector would use. (The authors' own detection config also runs without
it, ``rpe=False``, and their MAE checkpoints have none.)
"""

import logging
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .convert import build_converted_checkpoint, convert_state_dict
from .io import CheckpointError, load_checkpoint_file, unwrap_state_dict
from .keymaps import map_official_hivit_keys, official_hivit_layout

__all__ = [
    "official_hivit_to_hivit",
    "official_hivit_layout",
    "load_official_hivit",
    "build_hivit_checkpoint",
    "HIVIT_PREFIX",
]

logger = logging.getLogger(__name__)

# where the HiViT sits in the project's Mask R-CNN / Cascade configs (FPN.bottom_up)
HIVIT_PREFIX = "backbone.bottom_up."


def _state_dict(checkpoint: Union[str, Dict[str, Any]]) -> Dict[str, torch.Tensor]:
    if isinstance(checkpoint, str):
        return unwrap_state_dict(load_checkpoint_file(checkpoint), checkpoint)[0]
    return unwrap_state_dict(checkpoint)[0]


def official_hivit_to_hivit(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official HiViT (MAE or classification) state dict -> :class:`HiViT` state dict (backbone-relative keys).

    Accepts the raw state dict or a checkpoint dict holding it (``model`` / ``state_dict``, ``module.`` prefix).
    See the module doc for the key map and what is dropped; unknown keys are dropped with a warning
    (``convert_state_dict(..., source="hivit")`` refuses them instead, unless ``strict=False``).

    Raises:
        CheckpointError: the keys are not those of an official 3-stage HiViT.
    """
    out, _, dropped, unknown = map_official_hivit_keys(_state_dict(state_dict))
    if dropped:
        logger.info("HiViT conversion dropped %d keys (classifier, MAE decoder, relative position bias)", len(dropped))
    if unknown:
        logger.warning("HiViT conversion ignored %d unknown keys: %s", len(unknown), sorted(unknown)[:10])
    return out


def build_hivit_checkpoint(
    checkpoint: Union[str, Dict[str, Any]], prefix: str = HIVIT_PREFIX, num_heads: Optional[int] = None
) -> Dict[str, Any]:
    """The dict to ``torch.save`` for ``train.init_checkpoint``: ``{"model": {prefix + key: tensor}, metadata}``.

    The same as ``tools/convert_checkpoint.py`` writes for a HiViT file (it goes through
    :func:`~hieradet.checkpoint.convert.convert_state_dict` with ``source="hivit"``, so the weights are checked
    against a HiViT of the checkpoint's architecture and unknown keys are refused).

    Args:
        checkpoint: path to an official HiViT file, or its (loaded) state dict.
        prefix: where the HiViT sits in the detector (``backbone.bottom_up.`` under detectron2's FPN); ``""``
            for backbone-relative keys.
        num_heads: main-stage heads, recorded in the metadata (not stored in MAE weights); ``None``: read from
            the relative position bias tables when present, else the preset's of a preset size.
    """
    result = convert_state_dict(_state_dict(checkpoint), source="hivit", num_heads=num_heads)
    source_file = checkpoint if isinstance(checkpoint, str) else ""
    return build_converted_checkpoint(result, prefix, source_file=source_file)


def load_official_hivit(
    model: nn.Module, checkpoint: Union[str, Dict[str, Any]], prefix: str = "", dry_run: bool = False
) -> Tuple[List[str], List[str]]:
    """Converts an official HiViT checkpoint (a path or a state dict) and loads it into ``model``.

    Args:
        model: a :class:`HiViT`, or a module holding one under ``prefix`` (e.g. ``"backbone.bottom_up."``).
        checkpoint: path to the official ``.pth`` or its state dict.
        prefix: where the HiViT sits inside ``model``.
        dry_run: only check that the checkpoint fits (works on a model built on the meta device).

    Returns:
        (missing, unexpected): backbone keys left at their initialisation (by design the new relative position
        tables and output norms) and converted keys the backbone does not have.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable file, not a HiViT checkpoint, or a checkpoint whose architecture (width,
            depths, position grid) does not match the model's, naming the mismatching tensors.
    """
    sd = _state_dict(checkpoint)
    layout = official_hivit_layout(sd)
    converted = {prefix + k: v for k, v in official_hivit_to_hivit(sd).items()}
    own = model.state_dict()
    backbone = model.get_submodule(prefix.rstrip(".")) if prefix else model
    model_depths = tuple(getattr(backbone, "depths", ()))
    mismatched = [
        f"{k}: {tuple(v.shape)} in the checkpoint vs {tuple(own[k].shape)} in the model"
        for k, v in converted.items()
        if k in own and own[k].shape != v.shape
    ]
    unexpected = [k for k in converted if k not in own]
    if mismatched or unexpected or (model_depths and model_depths != tuple(layout["depths"])):
        raise CheckpointError(
            f"HiViT checkpoint (main width {layout['embed_dim']}, depths {layout['depths']}, position grid "
            f"{layout['pretrain_grid']}x{layout['pretrain_grid']}) does not fit the model (depths {model_depths}): "
            f"{'; '.join(mismatched[:3]) or 'no shape mismatch'}; unexpected keys {unexpected[:3]}. Use the "
            "HiViT size of the checkpoint (hivit_kwargs('T'|'S'|'B'|'L')) and pretrain_img_size = 16 x grid."
        )
    if not dry_run:
        model.load_state_dict(converted, strict=False)
    missing = [k for k in own if k.startswith(prefix) and k not in converted]
    return missing, unexpected
