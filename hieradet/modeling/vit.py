"""Plain ViT for ViTDet, with the absolute-win fix.

ViTDet (Li et al. 2022) fine-tunes an MAE ViT pretrained on 224 px (a 14x14 token grid) at 1024 px with
14x14 window attention and four global blocks. The original interpolates the 14x14 position embedding
to the whole 64x64 map, so no window sees the embedding it was pretrained with, and adds relative
position embeddings to every block to compensate. The fixed model tiles the pretrained 14x14 grid as a
window embedding (``pos_embed="abswin"``) and keeps relative position embeddings on the global blocks
only (``relpos="global"``). ``pos_embed="interpolate", relpos="all"`` is detectron2's original ViTDet.
"""

from typing import Dict, Sequence

import torch

from .base import PaddedBackbone, check_img_size, check_square_pad
from .blocks import RELPOS_MODES, plain_vit_blocks
from .layers import PatchEmbed, init_weights
from .pos_embed import grid_pos_embed

__all__ = ["ViT", "VIT_SIZES", "vit_kwargs"]

# ViTDet recipe: width, depth, heads, global blocks, drop path (COCO).
VIT_SIZES = {
    "B": dict(embed_dim=768, depth=12, num_heads=12, global_blocks=(2, 5, 8, 11), drop_path_rate=0.1),
    "L": dict(embed_dim=1024, depth=24, num_heads=16, global_blocks=(5, 11, 17, 23), drop_path_rate=0.4),
    "H": dict(embed_dim=1280, depth=32, num_heads=16, global_blocks=(7, 15, 23, 31), drop_path_rate=0.5),
}


class ViT(PaddedBackbone):
    """Plain ViT backbone with window attention, global blocks and abs-win position embeddings.

    Args:
        img_size (int): detection image size (sizes the relpos tables of global blocks).
        patch_size (int): patch size (16).
        in_chans (int): input channels.
        embed_dim, depth, num_heads (int): transformer size.
        mlp_ratio (float), qkv_bias (bool), drop_path_rate (float): as usual.
        window_size (int): window side for non-global blocks (14 = the pretraining grid).
        global_blocks (tuple[int]): indexes of blocks with global attention.
        relpos (str): ``"global"`` (default), ``"all"`` or ``"none"``.
        pretrain_img_size (int): pretraining image size (224 -> a 14x14 grid).
        pos_embed (str): ``"abswin"`` (tile the pretrained grid, default) or ``"interpolate"``
            (the original ViTDet); ``"abswin_single"`` equals ``"abswin"`` here (no global grid).
        use_act_checkpoint (bool): activation checkpointing in every block.
        out_feature (str): name of the single stride-16 output.
        square_pad (int): if > 0, detectron2 pads every batch to this square size.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        window_size: int = 14,
        global_blocks: Sequence[int] = (2, 5, 8, 11),
        relpos: str = "global",
        pretrain_img_size: int = 224,
        pos_embed: str = "abswin",
        use_act_checkpoint: bool = False,
        out_feature: str = "last_feat",
        square_pad: int = 0,
    ):
        super().__init__()
        if relpos not in RELPOS_MODES:
            raise ValueError(f"relpos must be one of {RELPOS_MODES}, got {relpos!r}")
        if window_size < 0:
            raise ValueError(f"window_size must be >= 0 (0 = global attention everywhere), got {window_size}")
        bad = [i for i in global_blocks if not 0 <= i < depth]
        if bad:
            raise ValueError(f"global_blocks {bad} out of range: this ViT has {depth} blocks (0-{depth - 1})")
        check_img_size(img_size)
        check_square_pad(square_pad, patch_size)
        self.global_blocks = tuple(int(i) for i in global_blocks)
        self.num_blocks = depth
        self.square_pad = square_pad
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, patch_size)
        windowed = len(set(global_blocks)) < depth  # some blocks attend in windows
        self.pos_embed = grid_pos_embed(
            "ViT", embed_dim, pretrain_img_size, patch_size, window_size, windowed, pos_embed
        )
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear in depth
        side = img_size // patch_size
        self.blocks = plain_vit_blocks(
            embed_dim,
            depth,
            num_heads,
            window_size,
            self.global_blocks,
            relpos,
            side,
            dpr,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            use_act_checkpoint=use_act_checkpoint,
        )
        self._out_features = [out_feature]
        self._out_feature_channels = {out_feature: embed_dim}
        self._out_feature_strides = {out_feature: patch_size}
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Args: x: (B, C, H, W). Returns: ``{out_feature: (B, embed_dim, H/16, W/16)}``."""
        if x.dim() != 4:
            raise ValueError(f"ViT expects (B, C, H, W) images, got shape {tuple(x.shape)}")
        x = self.patch_embed(x)
        x = self.pos_embed(x.shape[1:3]) + x  # pos first: the sum is contiguous BHWC (AbsWinPosEmbed.forward)
        for blk in self.blocks:
            x = blk(x)
        return {self._out_features[0]: x.permute(0, 3, 1, 2)}


def vit_kwargs(size: str, **overrides) -> dict:
    """Constructor arguments of the ViTDet preset ``size`` (B, L, H) updated with ``overrides``."""
    if size not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {size!r}; choose from {list(VIT_SIZES)}")
    return {**VIT_SIZES[size], **overrides}
