"""The pre-norm transformer block every backbone is made of, and the plain (single-resolution) block stack of
ViTDet and HiViT.

A block may change the width (``dim -> dim_out``) and pool its queries (``q_stride``), which is how Hiera moves
from one stage to the next; it may attend inside ``window_size`` x ``window_size`` windows (padding the map when
it is not a multiple) or globally (``window_size=0``); and it may add relative position embeddings.
"""

from typing import Optional, Tuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import Attention
from .layers import DropPath, LayerNorm, Mlp, has_hooks, needs_grad, norm_linear, norm_linear_ok
from .windows import (
    avg_pool_hw,
    is_static,
    padded_hw,
    pool_hw,
    window_partition,
    window_unpartition,
    window_unpartition_view,
)

__all__ = ["RELPOS_MODES", "Block", "plain_vit_blocks", "uses_rel_pos"]

RELPOS_MODES = ("global", "all", "none")


def _in_place_ok(out: torch.Tensor, other: torch.Tensor) -> bool:
    """Whether the residual sum ``out + other`` may be written into ``out`` (a fresh branch output): no autograd,
    no graph capture, and the sum keeps ``out``'s dtype and shape (under autocast a branch may be in half
    precision while the residual stream is fp32; the out-of-place sum then promotes)."""
    return (
        not needs_grad(out, other)
        and not torch.compiler.is_compiling()
        and out.dtype == other.dtype
        and out.shape == other.shape
    )


class Block(nn.Module):
    """Pre-norm transformer block on BHWC maps (Hiera's and ViT's block are both this).

    When ``dim != dim_out`` the shortcut is widened and pooled by ``q_stride`` so that it matches the
    pooled attention output: by default the normalised input is projected (``proj``, Hiera's key name) and
    max-pooled; with ``expand_proj=False`` (timm's ``use_expand_proj=False``, e.g. its
    ``hiera_small_abswin_256``) there is no projection and the shortcut is the *un-normalised* input,
    max-pooled and average-pooled, the two concatenated along channels (so ``dim_out`` must be ``2 * dim``).

    Windowed blocks partition the map *after* ``norm1`` and attend inside each window; with query pooling
    a ws x ws window becomes a (ws / q_stride) window of the output map.

    Args:
        dim, dim_out, num_heads, qkv_bias, q_stride: as in :class:`Attention`.
        mlp_ratio (float): MLP hidden width relative to ``dim_out``.
        drop_path (float): stochastic depth rate.
        window_size (int): 0 for global attention, else the window side in input tokens.
        use_rel_pos, rel_pos_size, rel_pos_zero_init: as in :class:`Attention`.
        norm_layer, act_layer: layer constructors.
        use_act_checkpoint (bool): recompute this block in backward to save memory.
        expand_proj (bool): widen the shortcut with a linear projection (True) or by concatenating its
            max and average pools (False); only used when ``dim != dim_out``.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        q_stride: int = 1,
        window_size: int = 0,
        use_rel_pos: bool = False,
        rel_pos_size: Optional[Tuple[int, int]] = None,
        rel_pos_zero_init: bool = True,
        norm_layer=LayerNorm,
        act_layer=nn.GELU,
        use_act_checkpoint: bool = False,
        expand_proj: bool = True,
    ):
        super().__init__()
        if window_size < 0:
            raise ValueError(f"window_size must be >= 0 (0 = global attention), got {window_size}")
        if window_size and q_stride > 1 and window_size % q_stride:
            raise ValueError(f"window_size={window_size} must be a multiple of q_stride={q_stride}")
        if dim != dim_out and not expand_proj and dim_out != 2 * dim:
            raise ValueError(
                f"expand_proj=False widens {dim} -> {dim_out} channels by concatenating a max and an average pool, "
                f"so dim_out must be 2 * dim = {2 * dim}"
            )
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.use_act_checkpoint = use_act_checkpoint
        self.norm1 = norm_layer(dim)
        if use_rel_pos and rel_pos_size is None and window_size:
            rel_pos_size = (window_size, window_size)
        self.attn = Attention(
            dim,
            dim_out,
            num_heads,
            qkv_bias=qkv_bias,
            q_stride=q_stride,
            use_rel_pos=use_rel_pos,
            rel_pos_size=rel_pos_size,
            rel_pos_zero_init=rel_pos_zero_init,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim_out)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio), act_layer=act_layer)
        self.expand_proj = expand_proj
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out and expand_proj else None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if norm_linear_ok(self.norm1, x, self.attn.qkv, self.proj) and not has_hooks(self.attn):
            # training on CPU: norm1 -> (window partition) -> qkv, and the shortcut's proj, as one autograd
            # function keeping only norm1's input (not the normalised map nor its partitioned copy)
            ws = self.window_size
            pad_hw = padded_hw(x.shape[1], x.shape[2], ws) if ws else None
            qkv = norm_linear(x, self.norm1, self.attn.qkv, ws, self.proj)
            if self.proj is not None:
                qkv, projected = qkv
                shortcut = pool_hw(projected, self.q_stride)
            x = self.attn(qkv, projected=True)
        else:
            x = self.norm1(x)
            if self.proj is not None:
                shortcut = pool_hw(self.proj(x), self.q_stride)
            if self.window_size:
                x, pad_hw = window_partition(x, self.window_size)
            x = self.attn(x)
        if self.proj is None:  # else the shortcut is the projected normalised input, pooled above
            if self.dim != self.dim_out:  # projection-free widening: [max pool, mean pool] of the raw input
                shortcut = torch.cat([pool_hw(shortcut, self.q_stride), avg_pool_hw(shortcut, self.q_stride)], dim=-1)
            elif self.q_stride > 1:
                shortcut = pool_hw(shortcut, self.q_stride)
        if self.window_size:
            ws = self.window_size // self.q_stride
            Hp, Wp = pad_hw[0] // self.q_stride, pad_hw[1] // self.q_stride
            if is_static(Hp, Wp) and (Hp, Wp) == tuple(shortcut.shape[1:3]) and shortcut.is_contiguous():
                # no padding: add the windows to the shortcut in window order, which writes the map's row-major
                # layout directly (no separate reassembly copy)
                B, C = shortcut.shape[0], shortcut.shape[-1]
                win = window_unpartition_view(x, ws, (Hp, Wp))  # (B, nh, ws, nw, ws, C) view
                x = (shortcut.view(win.shape) + self.drop_path(win)).view(B, Hp, Wp, C)
            else:
                x = window_unpartition(x, ws, (Hp, Wp), shortcut.shape[1:3], contiguous=False)
                x = shortcut + self.drop_path(x)
        elif _in_place_ok(x, shortcut):  # inference: the attention output is this block's own fresh tensor
            x = self.drop_path(x).add_(shortcut)
        else:
            x = shortcut + self.drop_path(x)
        if norm_linear_ok(self.norm2, x, self.mlp.fc1) and not has_hooks(self.mlp):
            # training on CPU: norm2 -> fc1 keeping only norm2's input (the normalised map is recomputed)
            y = self.drop_path(self.mlp(norm_linear(x, self.norm2, self.mlp.fc1), hidden=True))
        else:
            y = self.drop_path(self.mlp(self.norm2(x)))
        if _in_place_ok(y, x):  # inference: the MLP output is this block's own fresh tensor
            return y.add_(x)
        return x + y

    def extra_repr(self) -> str:
        if self.dim == self.dim_out or self.expand_proj:
            return ""
        return f"expand_proj=False: shortcut {self.dim} -> {self.dim_out} = [max pool, mean pool]"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_act_checkpoint and self.training and x.requires_grad:
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


def uses_rel_pos(relpos: str, window_size: int) -> bool:
    """Whether a block gets relative position embeddings under the ``relpos`` placement
    (``"global"``: only global-attention blocks, i.e. ``window_size == 0``; ``"all"``; ``"none"``)."""
    return relpos == "all" or (relpos == "global" and window_size == 0)


def plain_vit_blocks(
    dim: int,
    depth: int,
    num_heads: int,
    window_size: int,
    global_blocks,
    relpos: str,
    global_side: int,
    drop_path_rates,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    use_act_checkpoint: bool = False,
) -> nn.ModuleList:
    """The single-resolution stage of ViTDet and HiViT: ``depth`` blocks of width ``dim`` with
    ``window_size`` windows except ``global_blocks``, relpos placed by ``relpos``; a global block's relpos
    tables cover a ``global_side`` x ``global_side`` map, a windowed block's one window."""
    blocks = nn.ModuleList()
    for i in range(depth):
        window = 0 if i in global_blocks else window_size
        blocks.append(
            Block(
                dim,
                dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=drop_path_rates[i],
                window_size=window,
                use_rel_pos=uses_rel_pos(relpos, window),
                rel_pos_size=(global_side, global_side) if window == 0 else (window, window),
                norm_layer=LayerNorm,
                use_act_checkpoint=use_act_checkpoint,
            )
        )
    return blocks
