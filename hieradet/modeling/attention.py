"""Multi-head attention on BHWC maps, shared by every backbone (HieraDet, ViT, HiViT).

Attention may pool its queries (``q_stride``, Hiera's stage transition) and add decomposed relative
position embeddings (MViTv2 / ViTDet formulation) to its logits. Windows are cut by the block
(:mod:`.blocks`, :mod:`.windows`).

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
  workspace; :func:`set_workspace_enabled` turns it off;
* training with relpos on CPU goes through :class:`_RelPosAttention`, which keeps no (B, heads, Lq, Lk)
  tensor for backward (SDPA's math path, taken when the mask needs a gradient, keeps its softmax); on GPU
  the SDPA kernels take the mask's gradient themselves and the mask is built as at inference.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.symbolic_shapes import statically_known_true

from .layers import _WORKSPACE, clear_workspace, needs_grad, set_workspace_enabled, workspace_linear
from .windows import _flatten_copy, is_static, pool_hw

__all__ = ["Attention", "clear_workspace", "rel_pos_bias", "rel_pos_lookup", "set_workspace_enabled"]


def rel_pos_lookup(q_size: int, k_size: int, table: torch.Tensor) -> torch.Tensor:
    """Gather relative position embeddings for every (query, key) pair along one axis.

    ``table`` holds one embedding per relative distance, (L, C). Query and key coordinates are put on
    a common scale when their resolutions differ (pooled queries), and the table is linearly resized
    when L does not match the ``2 * max(q_size, k_size) - 1`` distances this pair needs.
    Returns (q_size, k_size, C).
    """
    if not is_static(q_size, k_size):
        # traced with symbolic sizes: resize unconditionally (linear resizing to the same length is the identity)
        # and take the maxima symbolically, so the graph holds for every size instead of the traced one
        num_dist = 2 * torch.sym_max(q_size, k_size) - 1
        table = F.interpolate(table.t().unsqueeze(0), size=num_dist, mode="linear").squeeze(0).t()
        if statically_known_true(q_size == k_size):  # unpooled queries: integer offsets, no float sizes
            idx = torch.arange(q_size, device=table.device)[:, None] - torch.arange(k_size, device=table.device)
            return table[idx + (k_size - 1)]
        q_scale = torch.sym_max(k_size / q_size, 1.0)
        k_scale = torch.sym_max(q_size / k_size, 1.0)
    else:
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


def _rel_pos_factors(q, table_h, table_w, q_hw, k_hw) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two factors of the decomposed bias, contiguous (B, heads, qh, qw, kh) and (B, heads, qh, qw, kw)."""
    (qh, qw), (kh, kw) = q_hw, k_hw
    Rh = rel_pos_lookup(qh, kh, table_h)
    Rw = rel_pos_lookup(qw, kw, table_w)
    B, nh, _, hd = q.shape
    r_q = q.reshape(B, nh, qh, qw, hd)
    # in (B, heads, qh, qw, k) row-major order, so that their broadcast sum is produced directly in the
    # (B, heads, qh * qw, kh * kw) layout the attention kernels read
    bias_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, Rh).contiguous()
    bias_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, Rw).contiguous()
    return bias_h, bias_w


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
    B, nh = q.shape[:2]
    bias_h, bias_w = _rel_pos_factors(q, table_h, table_w, q_hw, k_hw)
    if out is None:
        bias = bias_h[..., :, None] + bias_w[..., None, :]
    else:
        bias = torch.add(bias_h[..., :, None], bias_w[..., None, :], out=out.view(B, nh, qh, qw, kh, kw))
    return bias.view(B, nh, qh * qw, kh * kw)


# training with relpos on CPU: forward through SDPA's CPU flash op where torch has it (False: head by head)
_FLASH_CPU = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")


class _RelPosAttention(torch.autograd.Function):
    """Softmax attention with the decomposed relpos bias, for training on CPU, keeping only small tensors for
    backward.

    Autograd through ``scaled_dot_product_attention`` with a float mask that needs a gradient takes SDPA's math
    path on CPU, which keeps the whole (B, heads, Lq, Lk) softmax for backward (268 MB per global block of
    HieraDet-B at 1024 px, 805 MB for ViT-B) and allocates several fresh tensors of that size. Here the forward
    runs SDPA's CPU flash kernel on a transient mask, which also returns the log-sum-exp (without that op: the
    logits of one head at a time in one reused buffer, exponentiated in place), and backward rebuilds each
    head's softmax in one reused buffer from q, k, the two small bias factors and the log-sum-exp. Kept for
    backward: q, k, v, the output, ``bias_h`` / ``bias_w`` and the log-sum-exp.

    Inputs: q (B, heads, Lq, hd), k and v (B, heads, Lk, hd), bias_h (B, heads, qh, qw, kh) and bias_w
    (B, heads, qh, qw, kw), with Lq = qh * qw and Lk = kh * kw; the output is SDPA's (B, heads, Lq, hd).
    """

    @staticmethod
    def _logits(buf, q, k, bias_h, bias_w, scale):
        """``bias + scale * q k^T`` of one head, written into ``buf`` (B, Lq, Lk)."""
        B, qh, qw, kh = bias_h.shape
        torch.add(bias_h[..., :, None], bias_w[..., None, :], out=buf.view(B, qh, qw, kh, bias_w.shape[-1]))
        return buf.baddbmm_(q, k.transpose(1, 2), alpha=scale)

    @staticmethod
    def forward(ctx, q, k, v, bias_h, bias_w):
        B, nh, Lq, hd = q.shape
        if _FLASH_CPU:
            # SDPA's CPU flash kernel on a transient mask; it also returns the log-sum-exp backward needs
            mask = torch.add(bias_h[..., :, None], bias_w[..., None, :]).view(B, nh, Lq, k.shape[2])
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=mask)
            del mask
            ctx.save_for_backward(q, k, v, bias_h, bias_w, out, lse.unsqueeze(-1))
            return out
        scale = hd**-0.5
        buf = q.new_empty(B, Lq, k.shape[2])
        out = q.new_empty(B, nh, Lq, v.shape[-1])
        lse = q.new_empty(B, nh, Lq, 1)
        for h in range(nh):
            p = _RelPosAttention._logits(buf, q[:, h], k[:, h], bias_h[:, h], bias_w[:, h], scale)
            row_max = p.amax(-1, keepdim=True)
            p.sub_(row_max).exp_()
            row_sum = p.sum(-1, keepdim=True)
            out[:, h] = torch.bmm(p, v[:, h]).div_(row_sum)
            lse[:, h] = row_max + row_sum.log()
        ctx.save_for_backward(q, k, v, bias_h, bias_w, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, bias_h, bias_w, out, lse = ctx.saved_tensors
        B, nh, Lq, hd = q.shape
        scale = hd**-0.5
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        grad_bh, grad_bw = torch.empty_like(bias_h), torch.empty_like(bias_w)
        delta = (grad_out * out).sum(-1, keepdim=True)  # D_i = sum_j P_ij dP_ij = dO_i . O_i
        p_buf = q.new_empty(B, Lq, k.shape[2])
        ds = torch.empty_like(p_buf)
        for h in range(nh):
            qh_, kh_, vh_, go = q[:, h], k[:, h], v[:, h], grad_out[:, h]
            p = _RelPosAttention._logits(p_buf, qh_, kh_, bias_h[:, h], bias_w[:, h], scale)
            p.sub_(lse[:, h]).exp_()  # the softmax, from the saved log-sum-exp
            grad_v[:, h] = torch.bmm(p.transpose(1, 2), go)
            torch.bmm(go, vh_.transpose(1, 2), out=ds)
            ds.sub_(delta[:, h]).mul_(p)  # dS = P * (dP - D)
            ds5 = ds.view(bias_h.shape[0], *bias_h.shape[2:], bias_w.shape[-1])  # (B, qh, qw, kh, kw)
            grad_bh[:, h] = ds5.sum(-1)
            grad_bw[:, h] = ds5.sum(-2)
            grad_q[:, h] = torch.bmm(ds, kh_).mul_(scale)
            grad_k[:, h] = torch.bmm(ds.transpose(1, 2), qh_).mul_(scale)
        return grad_q, grad_k, grad_v, grad_bh, grad_bw


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

    def forward(self, x: torch.Tensor, projected: bool = False) -> torch.Tensor:
        """Args:
        x: the input map (B, H, W, dim), or with ``projected=True`` its qkv projection (B, H, W, 3 * dim_out)
            computed by the caller (:class:`.blocks.Block` fuses it with the norm before it in CPU training).
        """
        # at inference on CPU the projection is written into a reused workspace (q, k, v are consumed here)
        qkv = x if projected else workspace_linear(self.qkv, x, "qkv")
        B, H, W, _ = qkv.shape
        dim_out = self.num_heads * self.head_dim
        # (B, HW, 3, heads, hd) view; q, k, v stay strided views of it
        q, k, v = qkv.view(B, H * W, 3, self.num_heads, self.head_dim).unbind(2)
        qh, qw = H, W
        if self.q_stride > 1:
            q = pool_hw(q.reshape(B, H, W, dim_out), self.q_stride)
            qh, qw = q.shape[1:3]
            q = q.view(B, qh * qw, self.num_heads, self.head_dim)
            if needs_grad(qkv) and qkv.device.type == "cpu" and not torch.compiler.is_compiling():
                # training on CPU: k and v copied out of the projection, so that its (unpooled) q third is not
                # kept alive for backward by the k / v views (the pooled q is a tensor of its own)
                k, v = qkv.view(B, H * W, 3, self.num_heads, self.head_dim)[:, :, 1:].contiguous().unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, L, hd)
        if not self.use_rel_pos:
            x = F.scaled_dot_product_attention(q, k, v)
        elif not needs_grad(q, self.rel_pos_h, self.rel_pos_w):
            out = _WORKSPACE.get(B * self.num_heads * qh * qw * H * W, q.dtype, q.device, "relpos")
            bias = rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (qh, qw), (H, W), out=out)
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        elif q.device.type == "cpu":  # training on CPU: no (B, heads, Lq, Lk) tensor kept for backward
            bias_h, bias_w = _rel_pos_factors(q, self.rel_pos_h, self.rel_pos_w, (qh, qw), (H, W))
            x = _RelPosAttention.apply(q, k, v, bias_h, bias_w)
        else:  # GPU kernels take the mask's gradient themselves
            bias = rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (qh, qw), (H, W))
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = _flatten_copy(x.transpose(1, 2), (B, qh, qw, dim_out))  # eager: a view for the SDPA kernels' layout
        return self.proj(x)
