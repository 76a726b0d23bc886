"""Layer-wise learning-rate decay (Clark et al. 2020; BEiT; ViTDet) for every backbone here.

A parameter's layer id is 0 for the stem (``patch_embed``, ``pos_embed``), ``i + 1`` for block ``i``
(Hiera: the block's index over the whole network, not within its stage) and ``num_blocks + 1`` for
everything else (neck, heads). Its learning-rate factor is ``decay ** (num_blocks + 1 - layer_id)``.
"""

import re

__all__ = ["layer_id", "layer_decay_rate"]

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def layer_id(name: str, num_blocks: int) -> int:
    """Layer id of the parameter ``name`` (full name, e.g. ``backbone.bottom_up.blocks.3.attn.qkv.weight``)."""
    if "backbone." not in name:
        return num_blocks + 1
    if ".patch_embed." in name or ".pos_embed." in name:
        return 0
    m = _BLOCK.search(name)
    if m:
        return int(m.group(1)) + 1
    return num_blocks + 1


def layer_decay_rate(name: str, lr_decay_rate: float = 1.0, num_blocks: int = 12) -> float:
    """Learning-rate factor for ``name``; pass it to detectron2's ``get_default_optimizer_params`` as
    ``lr_factor_func=partial(layer_decay_rate, lr_decay_rate=0.85, num_blocks=24)``."""
    return lr_decay_rate ** (num_blocks + 1 - layer_id(name, num_blocks))
