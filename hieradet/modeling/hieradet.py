"""HieraDet: Hiera as a detection backbone, with recursive absolute-win position embeddings.

Hiera (Ryali et al. 2023) has four stages at strides 4/8/16/32. Stages 1-2 attend inside 8x8 and 4x4
windows (its "mask units", both 32 px wide); for detection stages 3-4 get 14x14 and 7x7 windows (224 px,
the pretraining image) and three evenly spaced stage-3 blocks stay global, as in Bolya et al. 2024.
Only those global blocks carry relative position embeddings (``relpos="global"``).

Block ``i`` that opens a stage pools its queries 2x2 and doubles the width; like official Hiera and
SAM 2, that block still attends with the *previous* stage's window (window and pooling lag by one
block), so its 2x2 max over queries stays inside one window.
"""

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from .base import PaddedBackbone, check_img_size, check_square_pad
from .blocks import RELPOS_MODES, Block, uses_rel_pos
from .layers import LayerNorm, PatchEmbed, init_weights
from .pos_embed import AbsWinPosEmbed, check_window_alignment

__all__ = ["HieraDet", "HIERA_SIZES", "hieradet_kwargs", "default_global_blocks", "stage_ends"]

# Ryali et al. 2023 (Hiera), Tab. 2: channels of stage 1, heads of stage 1, blocks per stage (both double per stage).
HIERA_SIZES = {
    "T": dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2)),
    "S": dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2)),
    "B": dict(embed_dim=96, num_heads=1, stages=(2, 3, 16, 3)),
    "B+": dict(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3)),
    "L": dict(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4)),
    "H": dict(embed_dim=256, num_heads=4, stages=(2, 6, 36, 4)),
}


def stage_ends(stages: Sequence[int]) -> Tuple[int, ...]:
    """0-based index of the last block of each stage."""
    ends, total = [], 0
    for n in stages:
        total += n
        ends.append(total - 1)
    return tuple(ends)


def default_global_blocks(stages: Sequence[int], num_global: int = 3, spacing: Optional[int] = None) -> Tuple[int, ...]:
    """Global-attention blocks in stage 3: ``num_global`` evenly spaced, the last one ending stage 3.

    The spacing is a quarter of stage 3 (rounded) for stages shorter than 36 blocks and 10 from 36 on,
    which reproduces the paper's choices (Tab. 16 / App. C: B, B+ -> 12,16,20; L, H -> 23,33,43) and
    gives T -> 5,7,9 and S -> 7,10,13.
    """
    n3 = stages[2]
    last = stage_ends(stages)[2]
    if spacing is None:
        spacing = 10 if n3 >= 36 else max(1, round(n3 / 4))
    blocks = tuple(last - spacing * k for k in reversed(range(num_global)))
    first3 = stage_ends(stages)[1] + 1
    if blocks[0] < first3:
        raise ValueError(f"{num_global} global blocks spaced {spacing} do not fit in stage 3 (blocks {first3}-{last})")
    return blocks


class HieraDet(PaddedBackbone):
    """Hiera backbone for detection: four BHWC stages, returned as NCHW features ``scale2``-``scale5``.

    Args:
        embed_dim (int): stage-1 width. num_heads (int): stage-1 heads.
        stages (tuple[int]): blocks per stage.
        dim_mul, head_mul (float): width / heads multiplier at each stage transition.
        q_pool (int): number of stage transitions that pool queries (3 for four stages).
        q_stride (int): pooling stride at each transition.
        window_size (tuple[int]): window per stage in that stage's tokens; 0 = global attention.
        global_blocks (tuple[int]): block indexes that attend globally regardless of ``window_size``.
        relpos (str): where relative position embeddings go: ``"global"`` (the global blocks, default),
            ``"all"`` (every block) or ``"none"``.
        img_size (int): detection image size the relpos tables of global blocks are sized for.
        pretrain_img_size (int): image size of the pretrained model (its stride-4 grid is the tile).
        pos_embed (str): ``"abswin"`` (recursive, default), ``"abswin_single"`` or ``"interpolate"``
            (the bugged baseline); see :mod:`hieradet.modeling.pos_embed`.
            With ``"abswin"`` the windows must line up with the pretraining tile: stage window ``w`` at
            stride ``s`` spans ``w * s / patch_stride`` stride-4 tokens, which must be a multiple or a divisor
            of ``pretrain_img_size / patch_stride`` (224 px: windows 8, 4, 14, 7; 256 px: 8, 4, 16, 8);
            ``"abswin_single"`` likewise with the window embedding; anything else is a ``ValueError``.
        pos_embed_window (int or tuple or None): tiled window embedding size; 8 for an abs-win
            pretrained Hiera, ``pretrain_img_size // 4`` (56) for an original Hiera's full grid.
        pos_embed_global (int or tuple or None): interpolated global embedding size (7 for abs-win
            Hiera; ``None`` for an original Hiera).
        pos_embed_antialias (bool): antialiased global interpolation (timm's abs-win Hiera: True).
        expand_proj (bool): how a stage transition widens the shortcut: a linear projection (True, official
            Hiera and SAM 2) or, without weights, the concatenated max and average pools of the block input
            (False, timm's ``use_expand_proj=False``, e.g. ``hiera_small_abswin_256``).
        mlp_ratio (float), qkv_bias (bool), drop_path_rate (float): as usual; drop path grows linearly.
        patch_kernel, patch_stride, patch_padding (int): the stem convolution (7 / 4 / 3).
        in_chans (int): input channels.
        use_act_checkpoint (bool): activation checkpointing in every block.
        out_features (tuple[str]): subset of ``scale2``..``scale5`` to return.
        square_pad (int): if > 0, detectron2 pads every batch to this square size.
    """

    def __init__(
        self,
        embed_dim: int = 96,
        num_heads: int = 1,
        stages: Sequence[int] = (2, 3, 16, 3),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        q_pool: int = 3,
        q_stride: int = 2,
        window_size: Sequence[int] = (8, 4, 14, 7),
        global_blocks: Optional[Sequence[int]] = None,
        relpos: str = "global",
        img_size: int = 1024,
        pretrain_img_size: int = 224,
        pos_embed: str = "abswin",
        pos_embed_window=8,
        pos_embed_global=7,
        pos_embed_antialias: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        patch_kernel: int = 7,
        patch_stride: int = 4,
        patch_padding: int = 3,
        in_chans: int = 3,
        use_act_checkpoint: bool = False,
        out_features: Sequence[str] = ("scale2", "scale3", "scale4", "scale5"),
        square_pad: int = 0,
        expand_proj: bool = True,
    ):
        super().__init__()
        stages = tuple(int(s) for s in stages)
        if not stages or min(stages) < 1:
            raise ValueError(f"stages must be positive block counts, one per stage, got {stages}")
        depth = sum(stages)
        if len(stages) != len(window_size):
            raise ValueError(f"window_size {tuple(window_size)} needs one entry per stage ({len(stages)} stages)")
        if any(w < 0 for w in window_size):
            raise ValueError(f"window_size entries must be >= 0 (0 = global), got {tuple(window_size)}")
        if not 0 <= q_pool < len(stages):
            raise ValueError(f"q_pool={q_pool} must be in [0, {len(stages) - 1}]")
        if relpos not in RELPOS_MODES:
            raise ValueError(f"relpos must be one of {RELPOS_MODES}, got {relpos!r}")
        check_img_size(img_size)
        check_square_pad(square_pad, patch_stride * q_stride**q_pool)
        if global_blocks is None:
            global_blocks = default_global_blocks(stages)
        global_blocks = tuple(int(i) for i in global_blocks)
        bad = [i for i in global_blocks if not 0 <= i < depth]
        if bad:
            raise ValueError(f"global_blocks {bad} out of range: this Hiera has {depth} blocks (0-{depth - 1})")
        names = [f"scale{i + 2}" for i in range(len(stages))]
        unknown = [f for f in out_features if f not in names]
        if unknown:
            raise ValueError(f"unknown out_features {unknown}; choose from {names}")

        self.stage_ends = stage_ends(stages)
        self.global_blocks = global_blocks
        self.num_blocks = depth
        self.square_pad = square_pad
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_kernel, patch_stride, patch_padding)
        pretrain_grid = pretrain_img_size // patch_stride
        self.pos_embed = AbsWinPosEmbed(
            embed_dim,
            pretrain_size=pretrain_grid,
            window_size=pos_embed_window,
            global_size=pos_embed_global,
            mode=pos_embed,
            antialias=pos_embed_antialias,
        )

        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear in depth
        self.blocks = nn.ModuleList()
        dim, heads, stage, stride = embed_dim, num_heads, 0, patch_stride
        self._out_feature_channels: Dict[str, int] = {}
        self._out_feature_strides: Dict[str, int] = {}
        windows_used = {}  # stage whose window it is -> (window, stride of its tokens)
        for i in range(depth):
            dim_out, block_q_stride = dim, 1
            # window and pooling lag by one block: a stage's first block uses the previous window
            window, window_stage = window_size[stage], stage
            if i - 1 in self.stage_ends[:-1]:
                stage += 1
                dim_out = int(dim * dim_mul)
                heads = int(heads * head_mul)
                if stage <= q_pool:
                    block_q_stride = q_stride
            if i in global_blocks:
                window = 0
            if window:
                windows_used[window_stage] = (window, stride)
            use_rel_pos = uses_rel_pos(relpos, window)
            rel_size = None
            if use_rel_pos and window == 0:
                side = math.ceil(img_size / stride)
                rel_size = (side, side)
            self.blocks.append(
                Block(
                    dim,
                    dim_out,
                    heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop_path=dpr[i],
                    q_stride=block_q_stride,
                    window_size=window,
                    use_rel_pos=use_rel_pos,
                    rel_pos_size=rel_size,
                    norm_layer=LayerNorm,
                    use_act_checkpoint=use_act_checkpoint,
                    expand_proj=expand_proj,
                )
            )
            stride *= block_q_stride
            dim = dim_out
            if i in self.stage_ends:
                name = names[self.stage_ends.index(i)]
                self._out_feature_channels[name] = dim
                self._out_feature_strides[name] = stride
        self._out_features = list(out_features)
        self._check_window_alignment(window_size, windows_used, patch_stride, q_stride, q_pool, pretrain_img_size)
        self.apply(init_weights)

    def _check_window_alignment(
        self, window_size, windows_used, patch_stride: int, q_stride: int, q_pool: int, pretrain_img_size: int
    ) -> None:
        """Refuse windows that cut across the tiles of the embedding (see :func:`check_window_alignment`)."""
        tile = self.pos_embed.tiled_grid()
        if tile is None:
            return
        scales = {s: stride // patch_stride for s, (_, stride) in windows_used.items()}
        suggested = list(window_size)
        for s, scale in scales.items():
            # the aligned window nearest to the configured one (poolable by the next stage's first block)
            step = q_stride if s < q_pool else 1
            fits = [
                c
                for c in range(step, 2 * max(window_size[s], tile[0] // scale) + 1, step)
                if (c * scale) % tile[0] == 0 or tile[0] % (c * scale) == 0
            ]
            if fits:
                suggested[s] = min(fits, key=lambda c: (abs(c - window_size[s]), -c))
        check_window_alignment(
            self.pos_embed,
            [(f"stage {s + 1}", w, scales[s]) for s, (w, _) in sorted(windows_used.items())],
            owner=f"HieraDet (pretrain_img_size={pretrain_img_size}, window_size={tuple(window_size)})",
            unit=f"stride-{patch_stride} tokens",
            hint=f"Use e.g. window_size={tuple(suggested)}, or pos_embed='abswin_single' or 'interpolate'.",
        )

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Args: x: (B, C, H, W) images. Returns: dict of NCHW features for ``out_features``."""
        if x.dim() != 4:
            raise ValueError(f"HieraDet expects (B, C, H, W) images, got shape {tuple(x.shape)}")
        x = self.patch_embed(x)  # B, H/4, W/4, C
        x = self.pos_embed(x.shape[1:3]) + x  # pos first: the sum is contiguous BHWC (AbsWinPosEmbed.forward)
        outputs = {}
        stage_names = {end: f"scale{k + 2}" for k, end in enumerate(self.stage_ends)}
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            name = stage_names.get(i)
            if name in self._out_features:
                outputs[name] = x.permute(0, 3, 1, 2)
        return outputs


def hieradet_kwargs(size: str, **overrides) -> dict:
    """Constructor arguments of the HieraDet preset ``size`` (T, S, B, B+, L, H) updated with
    ``overrides``, e.g. ``HieraDet(**hieradet_kwargs("B", drop_path_rate=0.2))``."""
    if size not in HIERA_SIZES:
        raise ValueError(f"unknown Hiera size {size!r}; choose from {list(HIERA_SIZES)}")
    kw = dict(HIERA_SIZES[size])
    kw["global_blocks"] = default_global_blocks(kw["stages"])
    kw.update(overrides)
    return kw
