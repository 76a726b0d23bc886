"""HiViT as a detection backbone, with absolute-win position embeddings.

HiViT (Zhang et al., "HiViT: A Simpler and More Efficient Design of Hierarchical Vision Transformer") is a plain
ViT whose first transformer blocks are replaced by a *hierarchical patch embedding*: a 4x4 patch embedding,
attention-free MLP blocks at stride 4, a 2x2 patch merge (concatenate, LayerNorm, linear), more MLP blocks at stride
8 and a second merge. The main stage is a stack of ordinary ViT blocks at stride 16, so MAE can drop masked tokens
exactly as for a ViT.

For detection (1024 px) the main stage attends inside 14x14 windows (224 px, the pretraining image) except for a few
evenly spaced global blocks. The HiViT authors interpolate the pretrained 14x14 position embedding to the whole map,
which is the bug described by Bolya et al. (2024): no detection window then sees the embedding it was pretrained
with. Here the pretrained 14x14 grid is *tiled* as a window embedding (``pos_embed="abswin"``, default) and only the
global blocks get (new, zero-initialised) decomposed relative position embeddings (``relpos="global"``);
``pos_embed="interpolate"`` is the authors' baseline.

Outputs ``scale2``..``scale5`` at strides 4, 8, 16, 32 (channels C/4, C/2, C, C) for detectron2's ``FPN``:
the two stem stages, the main stage, and a 2x2 max-pool of the main stage. HiViT has no fourth stage (its
authors removed it, Sec. 3 Step (d)), so stride 32 is made parameter-free by pooling, as the authors' detection
code does, rather than by a new, untrained downsampling layer. Each output goes through its own LayerNorm
(``out_norm=True``) because the main stage has no final norm and the stem outputs are raw residual streams.
"""

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .base import PaddedBackbone, check_img_size, check_square_pad
from .blocks import RELPOS_MODES, plain_vit_blocks
from .layers import DropPath, LayerNorm, Mlp, PatchEmbed, init_weights
from .pos_embed import grid_pos_embed
from .windows import pool_hw

__all__ = [
    "HiViT",
    "HIVIT_SIZES",
    "hivit_kwargs",
    "default_hivit_global_blocks",
    "MlpBlock",
    "PatchMerge",
    "HierarchicalPatchEmbed",
]

# Zhang et al. 2023 (HiViT), Tab. 7: blocks per stage (56^2, 28^2, 14^2 at 224 px), main-stage width (the stem
# stages are C/4 and C/2 wide), main-stage heads. Drop path: B from the authors' detection config (0.2); T/S/L are
# our choice.
HIVIT_SIZES = {
    "T": dict(embed_dim=384, depths=(1, 1, 10), num_heads=6, drop_path_rate=0.1),
    "S": dict(embed_dim=384, depths=(2, 2, 20), num_heads=6, drop_path_rate=0.2),
    "B": dict(embed_dim=512, depths=(2, 2, 20), num_heads=8, drop_path_rate=0.2),
    "L": dict(embed_dim=768, depths=(4, 4, 36), num_heads=12, drop_path_rate=0.4),
}


def default_hivit_global_blocks(depth: int, num_global: int = 4) -> Tuple[int, ...]:
    """``num_global`` evenly spaced global blocks of a ``depth``-block main stage, the last block being one.

    Block ``round((k + 1) * depth / num_global) - 1`` for k = 0..num_global-1: 20 blocks -> 4, 9, 14, 19 (the
    HiViT authors' choice for B), 10 -> 2, 4, 7, 9, 36 -> 8, 17, 26, 35 (and 24 -> 5, 11, 17, 23, ViTDet-L's).
    """
    if not 0 < num_global <= depth:
        raise ValueError(f"num_global={num_global} must be in [1, depth={depth}]")
    return tuple(int(math.floor((k + 1) * depth / num_global + 0.5)) - 1 for k in range(num_global))


class MlpBlock(nn.Module):
    """Attention-free pre-norm residual MLP block of HiViT's stem: ``x + drop_path(mlp(norm(x)))`` on BHWC maps.

    Args:
        dim (int): channels.
        mlp_ratio (float): hidden width relative to ``dim`` (3 in HiViT's stem).
        drop_path (float): stochastic depth rate.
        norm_layer, act_layer: layer constructors.
    """

    def __init__(
        self, dim: int, mlp_ratio: float = 3.0, drop_path: float = 0.0, norm_layer=LayerNorm, act_layer=nn.GELU
    ):
        super().__init__()
        self.norm = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.norm(x)))


class PatchMerge(nn.Module):
    """2x2 patch merging on BHWC maps: (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C).

    The four tokens of each 2x2 cell are concatenated in the order (top-left, bottom-left, top-right,
    bottom-right) (the layout of HiViT's and Swin's checkpoints), normalised and projected by a linear layer
    without bias. Odd maps are zero-padded at the bottom/right first.

    Args:
        dim (int): input channels.
        norm_layer: layer constructor for the (4 * dim) norm.
    """

    def __init__(self, dim: int, norm_layer=LayerNorm):
        super().__init__()
        self.norm = norm_layer(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1:3]
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class HierarchicalPatchEmbed(PatchEmbed):
    """HiViT's hierarchical patch embedding: stride-4 patches, MLP blocks, merge, MLP blocks, merge.

    Each entry of ``depths`` counts *transformer-block equivalents* as in the paper's Tab. 7: one block of a stem
    stage is two MLP blocks (its attention replaced by a second MLP), as in the official implementation.

    Args:
        in_chans (int): input channels.
        dim (int): width of the first stem stage (the main stage is 4x wider).
        depths (tuple[int, int]): blocks of the two stem stages.
        patch_size (int): stride of the stem convolution (4).
        mlp_ratio (float): MLP ratio of the stem blocks (3).
        drop_path (list[float]): stochastic depth of each MLP block, in order.
        use_act_checkpoint (bool): recompute the MLP blocks in backward.
    """

    def __init__(
        self,
        in_chans: int,
        dim: int,
        depths: Sequence[int] = (2, 2),
        patch_size: int = 4,
        mlp_ratio: float = 3.0,
        drop_path: Optional[Sequence[float]] = None,
        use_act_checkpoint: bool = False,
    ):
        super().__init__(in_chans, dim, patch_size, patch_size)
        n1, n2 = (2 * int(d) for d in depths)
        dpr = list(drop_path) if drop_path is not None else [0.0] * (n1 + n2)
        if len(dpr) != n1 + n2:
            raise ValueError(f"drop_path needs {n1 + n2} rates (two MLP blocks per stem block), got {len(dpr)}")
        self.use_act_checkpoint = use_act_checkpoint
        self.norm = LayerNorm(dim)
        self.stage1 = nn.ModuleList([MlpBlock(dim, mlp_ratio, dpr[i]) for i in range(n1)])
        self.merge1 = PatchMerge(dim)
        self.stage2 = nn.ModuleList([MlpBlock(2 * dim, mlp_ratio, dpr[n1 + i]) for i in range(n2)])
        self.merge2 = PatchMerge(2 * dim)

    def _run(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for blk in blocks:
            if self.use_act_checkpoint and self.training and x.requires_grad:
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args: x: (B, C, H, W) images. Returns BHWC maps at strides 4, 8 and 16."""
        x4 = self._run(self.stage1, self.norm(super().forward(x)))
        x8 = self._run(self.stage2, self.merge1(x4))
        return x4, x8, self.merge2(x8)


class HiViT(PaddedBackbone):
    """HiViT backbone for detection: returns NCHW features ``scale2``-``scale5`` (strides 4, 8, 16, 32).

    Args:
        embed_dim (int): width C of the main stage (stem stages: C/4 and C/2).
        depths (tuple[int]): blocks of the two stem stages and of the main stage (Tab. 7).
        num_heads (int): heads of the main stage.
        stem_mlp_ratio (float): MLP ratio of the stem blocks (3). mlp_ratio (float): of the main blocks (4).
        qkv_bias (bool): bias in the qkv projections.
        drop_path_rate (float): stochastic depth, growing linearly over stem MLP blocks and main blocks.
        window_size (int): window of the main stage's windowed blocks (14 = the 224 px pretraining grid);
            0 makes every block global.
        global_blocks (tuple[int]): main-stage block indexes with global attention (default: 4 evenly spaced,
            see :func:`default_hivit_global_blocks`; every block when the main stage is shorter).
        relpos (str): ``"global"`` (decomposed relative position embeddings on the global blocks, default),
            ``"all"`` or ``"none"``.
        img_size (int): detection image size the relpos tables of global blocks are sized for.
        pretrain_img_size (int): pretraining image size (224 -> a 14x14 main-stage grid).
        pos_embed (str): ``"abswin"`` (tile the pretrained grid, default) or ``"interpolate"`` (the HiViT
            authors' detection code); ``"abswin_single"`` equals ``"abswin"`` here (there is no global grid).
        patch_size (int): stride of the main stage (16); the stem convolution has stride ``patch_size // 4``.
        in_chans (int): input channels.
        out_norm (bool): a LayerNorm on each output.
        use_act_checkpoint (bool): activation checkpointing in every block.
        out_features (tuple[str]): subset of ``scale2``..``scale5`` to return.
        square_pad (int): if > 0, detectron2 pads every batch to this square size.
    """

    def __init__(
        self,
        embed_dim: int = 512,
        depths: Sequence[int] = (2, 2, 20),
        num_heads: int = 8,
        stem_mlp_ratio: float = 3.0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        window_size: int = 14,
        global_blocks: Optional[Sequence[int]] = None,
        relpos: str = "global",
        img_size: int = 1024,
        pretrain_img_size: int = 224,
        pos_embed: str = "abswin",
        patch_size: int = 16,
        in_chans: int = 3,
        out_norm: bool = True,
        use_act_checkpoint: bool = False,
        out_features: Sequence[str] = ("scale2", "scale3", "scale4", "scale5"),
        square_pad: int = 0,
    ):
        super().__init__()
        depths = tuple(int(d) for d in depths)
        if len(depths) != 3 or min(depths) < 1:
            raise ValueError(f"depths must be 3 positive block counts (stem 1, stem 2, main stage), got {depths}")
        if embed_dim % 4:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by 4 (the stem stages are C/4 and C/2 wide)")
        if patch_size % 4 or patch_size <= 0:
            raise ValueError(f"patch_size={patch_size} must be a positive multiple of 4 (two 2x2 merges follow)")
        if window_size < 0:
            raise ValueError(f"window_size must be >= 0 (0 = global attention everywhere), got {window_size}")
        if relpos not in RELPOS_MODES:
            raise ValueError(f"relpos must be one of {RELPOS_MODES}, got {relpos!r}")
        check_img_size(img_size)
        check_square_pad(square_pad, 2 * patch_size)  # stride 32 = the pooled main stage
        depth = depths[2]
        if global_blocks is None:
            global_blocks = default_hivit_global_blocks(depth, min(4, depth))
        global_blocks = tuple(int(i) for i in global_blocks)
        bad = [i for i in global_blocks if not 0 <= i < depth]
        if bad:
            raise ValueError(
                f"global_blocks {bad} out of range: this HiViT's main stage has {depth} blocks (0-{depth - 1})"
            )
        names = ("scale2", "scale3", "scale4", "scale5")
        unknown = [f for f in out_features if f not in names]
        if unknown or not out_features:
            raise ValueError(f"out_features {list(out_features)} must be a non-empty subset of {list(names)}")

        self.depths = depths
        self.global_blocks = global_blocks
        self.num_blocks = depth  # layer decay: the whole stem is layer 0, main block i is layer i + 1
        self.square_pad = square_pad
        stem_dim = embed_dim // 4
        num_stem = 2 * (depths[0] + depths[1])
        dpr = [drop_path_rate * i / max(num_stem + depth - 1, 1) for i in range(num_stem + depth)]
        self.patch_embed = HierarchicalPatchEmbed(
            in_chans,
            stem_dim,
            depths[:2],
            patch_size=patch_size // 4,
            mlp_ratio=stem_mlp_ratio,
            drop_path=dpr[:num_stem],
            use_act_checkpoint=use_act_checkpoint,
        )
        windowed = len(set(global_blocks)) < depth  # some blocks attend in windows
        self.pos_embed = grid_pos_embed(
            "HiViT", embed_dim, pretrain_img_size, patch_size, window_size, windowed, pos_embed
        )
        side = math.ceil(img_size / patch_size)
        self.blocks = plain_vit_blocks(
            embed_dim,
            depth,
            num_heads,
            window_size,
            global_blocks,
            relpos,
            side,
            dpr[num_stem:],
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            use_act_checkpoint=use_act_checkpoint,
        )
        channels = (stem_dim, 2 * stem_dim, embed_dim, embed_dim)
        strides = (patch_size // 4, patch_size // 2, patch_size, 2 * patch_size)
        self._out_features = list(out_features)
        self._out_feature_channels = {n: c for n, c in zip(names, channels) if n in out_features}
        self._out_feature_strides = {n: s for n, s in zip(names, strides) if n in out_features}
        self.out_norms = (
            nn.ModuleDict({n: LayerNorm(c) for n, c in self._out_feature_channels.items()}) if out_norm else None
        )
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Args: x: (B, C, H, W) images. Returns: dict of NCHW features for ``out_features``."""
        if x.dim() != 4:
            raise ValueError(f"HiViT expects (B, C, H, W) images, got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.patch_embed.proj.stride[0]:
            raise ValueError(f"image of size {tuple(x.shape[-2:])} is smaller than the stem's patch size")
        x4, x8, x = self.patch_embed(x)
        x = self.pos_embed(x.shape[1:3]) + x  # pos first: the sum is contiguous BHWC (AbsWinPosEmbed.forward)
        for blk in self.blocks:
            x = blk(x)
        maps = {"scale2": x4, "scale3": x8, "scale4": x}
        if "scale5" in self._out_features:
            maps["scale5"] = pool_hw(x, 2)
        outputs = {}
        for name in self._out_features:
            y = maps[name]
            if self.out_norms is not None:
                y = self.out_norms[name](y)
            outputs[name] = y.permute(0, 3, 1, 2)
        return outputs


def hivit_kwargs(size: str, **overrides) -> dict:
    """Constructor arguments of the HiViT preset ``size`` (T, S, B, L) updated with ``overrides``,
    e.g. ``HiViT(**hivit_kwargs("B", img_size=1024))``."""
    if size not in HIVIT_SIZES:
        raise ValueError(f"unknown HiViT size {size!r}; choose from {list(HIVIT_SIZES)}")
    kw = dict(HIVIT_SIZES[size])
    kw["global_blocks"] = default_hivit_global_blocks(kw["depths"][2])
    kw.update(overrides)
    return kw
