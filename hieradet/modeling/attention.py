"""Attention and transformer blocks shared by every backbone (HieraDet, ViT, HiViT).

Everything works on BHWC tensors. A block may change the width (``dim -> dim_out``) and pool its
queries (``q_stride``), which is how Hiera moves from one stage to the next; a block may attend inside
``window_size`` x ``window_size`` windows (padding the map when it is not a multiple) or globally
(``window_size=0``); and it may add decomposed relative position embeddings (MViTv2 / ViTDet
formulation) to its attention logits.

Speed notes (CPU and GPU, numerics unchanged; ``tests/test_attention.py`` checks every path against a
plain reference written in the test):

* attention always goes through ``F.scaled_dot_product_attention`` (flash kernels on CPU and GPU); the
  relative position bias is passed as its additive float mask, built directly in the contiguous
  ``(B, heads, Lq, Lk)`` layout the kernels read (no reshape copy);
* q, k and v are strided views of the qkv projection, and the attention output is read back as a view,
  so a block makes no layout copies besides the window partition itself;
* query / shortcut pooling is an elementwise max over a BHWC view (no NCHW round trip, no indices);
* a padded window map is cropped as a view; the residual add writes the contiguous result;
* without autograd (inference), the large relpos mask is written into a reused per-thread workspace
  and the MLP's GELU runs in place: fresh multi-megabyte CPU allocations are page-faulted in on every
  forward, which costs as much as the arithmetic they hold. :func:`clear_workspace` frees the
  workspace; :func:`set_workspace_enabled` turns it off.
"""

import threading
from functools import partial
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "Mlp",
    "Attention",
    "Block",
    "DropPath",
    "window_partition",
    "window_unpartition",
    "rel_pos_lookup",
    "rel_pos_bias",
    "pool_hw",
    "avg_pool_hw",
    "LayerNorm",
    "PatchEmbed",
    "init_weights",
    "RELPOS_MODES",
    "plain_vit_blocks",
    "uses_rel_pos",
    "clear_workspace",
    "set_workspace_enabled",
]

RELPOS_MODES = ("global", "all", "none")

# All references use LayerNorm with eps 1e-6.
LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample with probability ``drop_prob``."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """Two-layer MLP (``fc1``/``fc2``, the key names of official Hiera, MAE and detectron2's ViT)."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: Optional[int] = None, act_layer=nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if type(self.act) is nn.GELU and not _needs_grad(h):
            # inference: in place (same kernel, no second hidden-size allocation)
            h = torch._C._nn.gelu_(h, approximate=self.act.approximate)
        else:
            h = self.act(h)
        return self.fc2(h)


def pool_hw(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Max-pool a BHWC map by ``stride`` (ceil mode: an odd edge keeps its last row/column).

    Equals ``F.max_pool2d(x.permute(0, 3, 1, 2), stride, stride, ceil_mode=True)`` in BHWC. Computed as
    elementwise maxima of the ``stride`` row and column phases of a (B, H/s, s, W/s, s, C) view: no
    layout change, no pooling indices, any input strides (e.g. a slice of the qkv projection).
    """
    if stride == 1:
        return x
    B, H, W, C = x.shape
    pad_h, pad_w = (-H) % stride, (-W) % stride
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h), value=float("-inf"))
    x = x.unflatten(1, ((H + pad_h) // stride, stride)).unflatten(3, ((W + pad_w) // stride, stride))
    rows = x[:, :, 0]
    for i in range(1, stride):
        rows = torch.maximum(rows, x[:, :, i])  # (B, H/s, W/s, s, C)
    out = rows[:, :, :, 0]
    for j in range(1, stride):
        out = torch.maximum(out, rows[:, :, :, j])
    return out


def avg_pool_hw(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Average-pool a BHWC map by ``stride`` (ceil mode: a cell cut by an odd edge averages the tokens it has).

    Equals ``F.avg_pool2d(x.permute(0, 3, 1, 2), stride, stride, ceil_mode=True)`` in BHWC.
    """
    if stride == 1:
        return x
    B, H, W, C = x.shape
    pad_h, pad_w = (-H) % stride, (-W) % stride
    if not (pad_h or pad_w):
        return x.unflatten(1, (H // stride, stride)).unflatten(3, (W // stride, stride)).mean(dim=(2, 4))
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    x = x.unflatten(1, ((H + pad_h) // stride, stride)).unflatten(3, ((W + pad_w) // stride, stride))
    rows = torch.full(((H + pad_h) // stride,), stride, dtype=x.dtype, device=x.device)
    cols = torch.full(((W + pad_w) // stride,), stride, dtype=x.dtype, device=x.device)
    rows[-1], cols[-1] = stride - pad_h, stride - pad_w
    return x.sum(dim=(2, 4)) / (rows[:, None] * cols[None, :])[..., None]


def window_partition(x: torch.Tensor, window_size: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Split a BHWC map into (B * num_windows, ws, ws, C) windows, zero-padding bottom/right.

    Returns the windows and the padded size (Hp, Wp).
    """
    B, H, W, C = x.shape
    pad_h, pad_w = (-H) % window_size, (-W) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, C), (Hp, Wp)


def window_unpartition(
    windows: torch.Tensor,
    window_size: int,
    pad_hw: Tuple[int, int],
    hw: Tuple[int, int],
    contiguous: bool = True,
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: reassemble windows and crop the padding away.

    With ``contiguous=False`` a cropped map is returned as a view (saves a copy when the next op, e.g.
    a residual add, writes a new tensor anyway).
    """
    Hp, Wp = pad_hw
    H, W = hw
    nh, nw = Hp // window_size, Wp // window_size
    B = windows.shape[0] // (nh * nw)
    x = windows.view(B, nh, nw, window_size, window_size, -1).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(B, Hp, Wp, -1)
    if Hp > H or Wp > W:
        x = x[:, :H, :W, :]
        if contiguous:
            x = x.contiguous()
    return x


def rel_pos_lookup(q_size: int, k_size: int, table: torch.Tensor) -> torch.Tensor:
    """Gather relative position embeddings for every (query, key) pair along one axis.

    ``table`` holds one embedding per relative distance, (L, C). Query and key coordinates are put on
    a common scale when their resolutions differ (pooled queries), and the table is linearly resized
    when L does not match the ``2 * max(q_size, k_size) - 1`` distances this pair needs.
    Returns (q_size, k_size, C).
    """
    num_dist = 2 * max(q_size, k_size) - 1
    if table.shape[0] != num_dist:
        table = F.interpolate(table.t().unsqueeze(0), size=num_dist, mode="linear").squeeze(0).t()
    q_scale = max(k_size / q_size, 1.0)
    k_scale = max(q_size / k_size, 1.0)
    q_coords = torch.arange(q_size, device=table.device)[:, None] * q_scale
    k_coords = torch.arange(k_size, device=table.device)[None, :] * k_scale
    # shift so that the most negative distance, -(k_size - 1) * k_scale, indexes entry 0
    idx = (q_coords - k_coords) + (k_size - 1) * k_scale
    return table[idx.long()]


def rel_pos_bias(
    q: torch.Tensor,
    table_h: torch.Tensor,
    table_w: torch.Tensor,
    q_hw: Tuple[int, int],
    k_hw: Tuple[int, int],
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Decomposed relative position bias for the attention logits.

    Args:
        q: unscaled queries (B, heads, qh * qw, head_dim); any strides.
        table_h, table_w: relative position tables, (Lh, head_dim) and (Lw, head_dim).
        out: optional contiguous tensor with B * heads * qh * qw * kh * kw elements to write the bias
            into (no autograd); a new tensor is allocated when omitted.
    Returns:
        contiguous (B, heads, qh * qw, kh * kw) bias: ``q . R_h[qy, ky] + q . R_w[qx, kx]``.
    """
    (qh, qw), (kh, kw) = q_hw, k_hw
    Rh = rel_pos_lookup(qh, kh, table_h)
    Rw = rel_pos_lookup(qw, kw, table_w)
    B, nh, _, hd = q.shape
    r_q = q.reshape(B, nh, qh, qw, hd)
    # the two small factors in (B, heads, qh, qw, k) row-major order, so that their broadcast sum is
    # produced directly in the (B, heads, qh * qw, kh * kw) layout the attention kernels read
    bias_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, Rh).contiguous()
    bias_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, Rw).contiguous()
    if out is None:
        bias = bias_h[..., :, None] + bias_w[..., None, :]
    else:
        bias = torch.add(bias_h[..., :, None], bias_w[..., None, :], out=out.view(B, nh, qh, qw, kh, kw))
    return bias.view(B, nh, qh * qw, kh * kw)


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class _Workspace(threading.local):
    """Per-thread reusable CPU buffers for inference (one per dtype), grown on demand."""

    enabled = True

    def __init__(self):
        self.buffers = {}

    def get(self, numel: int, dtype: torch.dtype, device: torch.device) -> Optional[torch.Tensor]:
        if not _Workspace.enabled or device.type != "cpu":
            return None  # GPU caching allocators already reuse memory
        if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
            return None  # a graph must not capture the buffer
        buf = self.buffers.get(dtype)
        if buf is None or buf.numel() < numel:
            with torch.inference_mode(False):  # a normal tensor: writable in and out of inference mode
                buf = torch.empty(numel, dtype=dtype, device=device)
            self.buffers[dtype] = buf
        return buf[:numel]


_WORKSPACE = _Workspace()


def clear_workspace() -> None:
    """Free this thread's inference workspace (the relpos mask buffer)."""
    _WORKSPACE.buffers.clear()


def set_workspace_enabled(enabled: bool) -> None:
    """Turn the inference workspace on (default) or off (a fresh mask on every forward)."""
    _Workspace.enabled = bool(enabled)
    if not enabled:
        clear_workspace()


class Attention(nn.Module):
    """Multi-head attention on a BHWC map, with optional query pooling and relative position bias.

    Args:
        dim (int): input channels.
        dim_out (int): output channels (qkv projects ``dim -> 3 * dim_out``, as in Hiera).
        num_heads (int): heads.
        qkv_bias (bool): bias in the qkv projection.
        q_stride (int): max-pool stride for the queries (1: none). The output map is pooled accordingly.
        use_rel_pos (bool): add decomposed relative position embeddings.
        rel_pos_size (tuple): the key grid the tables are sized for (the window, or the whole map of a
            global block at the configured image size); other sizes resize the tables linearly.
        rel_pos_zero_init (bool): zero-initialise the tables (so a new relpos starts as a no-op).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        qkv_bias: bool = True,
        q_stride: int = 1,
        use_rel_pos: bool = False,
        rel_pos_size: Optional[Tuple[int, int]] = None,
        rel_pos_zero_init: bool = True,
    ):
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"dim_out={dim_out} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim_out // num_heads
        self.q_stride = q_stride
        self.qkv = nn.Linear(dim, dim_out * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if rel_pos_size is None:
                raise ValueError("use_rel_pos=True needs rel_pos_size (the key grid the tables cover)")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size[1] - 1, self.head_dim))
            if not rel_pos_zero_init:
                nn.init.trunc_normal_(self.rel_pos_h, std=0.02)
                nn.init.trunc_normal_(self.rel_pos_w, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        dim_out = self.num_heads * self.head_dim
        # (B, HW, 3, heads, hd) view; q, k, v stay strided views of it
        q, k, v = self.qkv(x).view(B, H * W, 3, self.num_heads, self.head_dim).unbind(2)
        qh, qw = H, W
        if self.q_stride > 1:
            q = pool_hw(q.reshape(B, H, W, dim_out), self.q_stride)
            qh, qw = q.shape[1:3]
            q = q.view(B, qh * qw, self.num_heads, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, L, hd)
        bias = None
        if self.use_rel_pos:
            out = None
            if not _needs_grad(q, self.rel_pos_h, self.rel_pos_w):
                out = _WORKSPACE.get(B * self.num_heads * qh * qw * H * W, q.dtype, q.device)
            bias = rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (qh, qw), (H, W), out=out)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x.transpose(1, 2).reshape(B, qh, qw, dim_out)  # a view for the SDPA kernels' layout
        return self.proj(x)


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
        x = self.norm1(x)
        if self.proj is not None:
            shortcut = pool_hw(self.proj(x), self.q_stride)
        elif self.dim != self.dim_out:  # projection-free widening: [max pool, mean pool] of the raw input
            shortcut = torch.cat([pool_hw(shortcut, self.q_stride), avg_pool_hw(shortcut, self.q_stride)], dim=-1)
        elif self.q_stride > 1:
            shortcut = pool_hw(shortcut, self.q_stride)
        H, W = x.shape[1:3]
        if self.window_size:
            x, pad_hw = window_partition(x, self.window_size)
        x = self.attn(x)
        if self.window_size:
            ws = self.window_size // self.q_stride
            Hp, Wp = pad_hw[0] // self.q_stride, pad_hw[1] // self.q_stride
            x = window_unpartition(x, ws, (Hp, Wp), shortcut.shape[1:3], contiguous=False)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        if self.dim == self.dim_out or self.expand_proj:
            return ""
        return f"expand_proj=False: shortcut {self.dim} -> {self.dim_out} = [max pool, mean pool]"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_act_checkpoint and self.training and x.requires_grad:
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class PatchEmbed(nn.Module):
    """Stem convolution returning BHWC (``patch_embed.proj``, the key of official Hiera and MAE)."""

    def __init__(self, in_chans: int, dim: int, kernel: int, stride: int, padding: int = 0):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=kernel, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def init_weights(m: nn.Module) -> None:
    """Truncated-normal (std 0.02) linear weights, zero biases, unit LayerNorms (ViT / Hiera init)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


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
