"""Key and position-embedding remapping from reference checkpoints to our backbones.

Kept apart from the models (timm's ``checkpoint_filter_fn`` style): each function takes a source
state dict and returns one for the matching backbone here, with backbone-relative keys.
"""

import math
from typing import Dict

import torch

__all__ = ["grid_from_tokens", "official_hiera_to_hieradet", "vit_to_abswin_vit"]


def grid_from_tokens(pos_embed: torch.Tensor, num_prefix_tokens: int = 0) -> torch.Tensor:
    """(1, [prefix +] h*w, C) token embedding -> (1, C, h, w) grid (square grids only)."""
    if pos_embed.dim() != 3:
        raise ValueError(f"expected a (1, N, C) position embedding, got shape {tuple(pos_embed.shape)}")
    tokens = pos_embed[:, num_prefix_tokens:]
    side = math.isqrt(tokens.shape[1])
    if side * side != tokens.shape[1]:
        raise ValueError(f"position embedding with {tokens.shape[1]} tokens is not a square grid")
    return tokens.reshape(1, side, side, -1).permute(0, 3, 1, 2).contiguous()


def official_hiera_to_hieradet(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official Hiera (``hiera-transformer``) classification weights -> :class:`HieraDet` weights.

    The full 56x56 ``pos_embed`` becomes the tiled window embedding (configure the backbone with
    ``pos_embed_window=56, pos_embed_global=None``); ``norm`` and ``head`` (the classifier) are dropped.
    """
    out = {}
    for k, v in state_dict.items():
        if k.startswith(("head.", "norm.")):
            continue
        if k == "pos_embed":
            out["pos_embed.window_embed"] = grid_from_tokens(v)
        else:
            out[k] = v
    return out


def vit_to_abswin_vit(state_dict: Dict[str, torch.Tensor], has_cls_token: bool = True) -> Dict[str, torch.Tensor]:
    """MAE / detectron2 ViT weights -> :class:`ViT` weights: the pretrained grid becomes the window tile."""
    out = {}
    for k, v in state_dict.items():
        if k in ("cls_token", "mask_token") or k.startswith(("head.", "fc_norm.", "norm.", "decoder", "mask_token")):
            continue
        if k == "pos_embed":
            out["pos_embed.window_embed"] = grid_from_tokens(v, 1 if has_cls_token else 0)
        else:
            out[k] = v
    return out
