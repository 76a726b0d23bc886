"""Window partitioning and pooling of BHWC maps, the shape arithmetic of windowed attention and of Hiera's
stage transitions (query / shortcut pooling).

Shapes may be symbolic (``torch.export`` / ``torch.compile(dynamic=True)``): every size here is a ceil-division
``(n + s - 1) // s`` of the input size, and a traced map is always padded / cropped (a zero-width pad or a full
crop is free), so no branch on the padding amount is taken while tracing. A branch on a symbolic size
(``if pad_h:``) would install a guard, and chains of ``Mod`` expressions over the stages made the symbolic
shape solver spend minutes per export; eager (integer) shapes keep the fast branches.
"""

from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "avg_pool_hw",
    "capturing_graph",
    "ceil_div",
    "crop_hw",
    "is_static",
    "padded_hw",
    "pool_hw",
    "window_partition",
    "window_unpartition",
    "window_unpartition_view",
]


def is_static(*sizes) -> bool:
    """Whether no size is symbolic (``torch.SymInt`` of ``torch.export`` / ``torch.compile(dynamic=True)``); eager
    ints and ``torch.jit.trace``'s size tensors count as static.

    Under ``torch.compile`` every size counts as symbolic: dynamo answers ``isinstance(size, torch.SymInt)`` with
    False for its symbolic sizes (it reports them as ``int``), so the static branches would run on symbols and
    install a guard per branch (``if pad_h:``), and tracing a tiny backbone with ``dynamic=True`` did not finish in
    300 s. The traced branches are exact for static sizes too (zero-width pads, full crops)."""
    if torch.compiler.is_dynamo_compiling():
        return False
    return not any(isinstance(s, torch.SymInt) for s in sizes)


def capturing_graph() -> bool:
    """Whether a graph is being captured (``torch.jit`` trace / script, ``torch.compile``, ``torch.export``): the
    eager-only paths (inference caches and workspaces, custom autograd functions) step aside."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


def ceil_div(n, d: int):
    """``ceil(n / d)`` for a (possibly symbolic) size ``n`` and a positive int ``d``."""
    return (n + d - 1) // d


def padded_hw(h, w, window_size: int):
    """The map size (Hp, Wp) that :func:`window_partition` pads ``h`` x ``w`` to: the next multiples of the window."""
    return ceil_div(h, window_size) * window_size, ceil_div(w, window_size) * window_size


def crop_hw(x: torch.Tensor, h, w, dims: Tuple[int, int] = (1, 2)) -> torch.Tensor:
    """The top-left ``h`` x ``w`` of ``x`` along ``dims``: a slice in eager mode; a gather when a size is symbolic,
    so that the result is a fresh contiguous tensor whatever the sizes (a traced slice's contiguity depends on
    whether it crops anything, which would install a guard specialising the graph to the traced size)."""
    if is_static(h, w):
        index = [slice(None)] * x.dim()
        index[dims[0]], index[dims[1]] = slice(None, h), slice(None, w)
        return x[tuple(index)]
    x = x.index_select(dims[0], torch.arange(h, device=x.device))
    return x.index_select(dims[1], torch.arange(w, device=x.device))


def _pool_hw(x: torch.Tensor, stride: int) -> torch.Tensor:
    B, H, W, C = x.shape
    nh, nw = ceil_div(H, stride), ceil_div(W, stride)
    pad_h, pad_w = nh * stride - H, nw * stride - W
    if not is_static(H, W) or pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h), value=float("-inf"))
    x = x.unflatten(1, (nh, stride)).unflatten(3, (nw, stride))
    rows = x[:, :, 0]
    for i in range(1, stride):
        rows = torch.maximum(rows, x[:, :, i])  # (B, H/s, W/s, s, C)
    out = rows[:, :, :, 0]
    for j in range(1, stride):
        out = torch.maximum(out, rows[:, :, :, j])
    return out


class _PoolHW(torch.autograd.Function):
    """:func:`pool_hw` with autograd on CPU, keeping for backward only which of the ``stride * stride`` cells won
    each output (one byte per output element). The elementwise maxima's own backward keeps the whole input and
    the row maxima (with the stage transitions' shortcut projection, 3x the pooled output in float).

    The gradient goes to the first (row-major) maximum of a cell, as ``F.max_pool2d``'s does; the chain of
    maxima would split it between tied maxima. Values are :func:`pool_hw`'s (the same computation).
    """

    @staticmethod
    def forward(ctx, x, stride):
        out = _pool_hw(x, stride)
        B, H, W, C = x.shape
        nh, nw = ceil_div(H, stride), ceil_div(W, stride)
        xp = x if (nh * stride, nw * stride) == (H, W) else F.pad(x, (0, 0, 0, nw * stride - W, 0, nh * stride - H))
        xp = xp.unflatten(1, (nh, stride)).unflatten(3, (nw, stride))  # (B, nh, s, nw, s, C)
        winner = torch.zeros(out.shape, dtype=torch.uint8, device=x.device)
        for cell in reversed(range(stride * stride)):  # the last write is the first maximum
            winner.masked_fill_(xp[:, :, cell // stride, :, cell % stride] == out, cell)
        ctx.stride, ctx.hw = stride, (H, W)
        ctx.save_for_backward(winner)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (winner,) = ctx.saved_tensors
        s, (H, W) = ctx.stride, ctx.hw
        B, nh, nw, C = grad_out.shape
        grad = grad_out.new_empty(B, nh, s, nw, s, C)
        zero = grad_out.new_zeros(())
        for cell in range(s * s):
            torch.where(winner == cell, grad_out, zero, out=grad[:, :, cell // s, :, cell % s])
        grad = grad.view(B, nh * s, nw * s, C)
        if (nh * s, nw * s) != (H, W):
            grad = grad[:, :H, :W].contiguous()
        return grad, None


def pool_hw(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Max-pool a BHWC map by ``stride`` (ceil mode: an odd edge keeps its last row/column).

    Equals ``F.max_pool2d(x.permute(0, 3, 1, 2), stride, stride, ceil_mode=True)`` in BHWC. Computed as
    elementwise maxima of the ``stride`` row and column phases of a (B, H/s, s, W/s, s, C) view: no
    layout change, no pooling indices, any input strides (e.g. a slice of the qkv projection). With autograd
    on CPU (not traced or compiled) it keeps only the one-byte index of each output's maximum for backward.
    """
    if stride == 1:
        return x
    if (
        x.requires_grad
        and torch.is_grad_enabled()
        and x.device.type == "cpu"
        and 1 < stride <= 16
        and not capturing_graph()
    ):
        return _PoolHW.apply(x, stride)
    return _pool_hw(x, stride)


def avg_pool_hw(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Average-pool a BHWC map by ``stride`` (ceil mode: a cell cut by an odd edge averages the tokens it has).

    Equals ``F.avg_pool2d(x.permute(0, 3, 1, 2), stride, stride, ceil_mode=True)`` in BHWC.
    """
    if stride == 1:
        return x
    B, H, W, C = x.shape
    nh, nw = ceil_div(H, stride), ceil_div(W, stride)
    pad_h, pad_w = nh * stride - H, nw * stride - W
    if is_static(H, W) and not (pad_h or pad_w):
        return x.unflatten(1, (nh, stride)).unflatten(3, (nw, stride)).mean(dim=(2, 4))
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    x = x.unflatten(1, (nh, stride)).unflatten(3, (nw, stride))
    # tokens per cell: stride, except the last row / column cut by the edge (no in-place writes: traceable)
    rows = (H - torch.arange(nh, device=x.device) * stride).clamp(max=stride)
    cols = (W - torch.arange(nw, device=x.device) * stride).clamp(max=stride)
    return x.sum(dim=(2, 4)) / (rows[:, None] * cols[None, :]).to(x.dtype)[..., None]


def _flatten_copy(x: torch.Tensor, shape) -> torch.Tensor:
    """``x.reshape(shape)`` of a permuted map. With symbolic sizes it always copies: ``reshape`` would ask whether
    the permuted map happens to be contiguous (it is when a single window covers the map), a guard that would
    specialise the graph to the traced window count, and ONNX's decompositions cannot always view it. Under
    ``torch.export`` it copies at static sizes too: ONNX's decompositions retrace ``reshape`` size-obliviously and
    turned a non-viewable one into a failing ``view`` (the stock configs' square-padded 1024 px backbone)."""
    if is_static(*x.shape) and not torch.compiler.is_exporting():
        return x.reshape(shape)
    x = x.clone(memory_format=torch.contiguous_format)
    if not torch.compiler.is_dynamo_compiling():
        return x.view(shape)
    # torch.compile: ``view`` re-checks the contiguity of the copy, which skips size-1 dims, so it guards on whether
    # a window count is 1 and recompiles when an image crosses one window; the copy is contiguous by construction,
    # so take its flat layout directly
    known = 1
    for s in shape:
        known = known * (s if s != -1 else 1)
    shape = [x.numel() // known if s == -1 else s for s in shape]
    strides, step = [], 1
    for s in reversed(shape):
        strides.insert(0, step)
        step = step * s
    return x.as_strided(shape, strides)


def window_partition(x: torch.Tensor, window_size: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Split a BHWC map into (B * num_windows, ws, ws, C) windows, zero-padding bottom/right.

    Returns the windows and the padded size (Hp, Wp).
    """
    B, H, W, C = x.shape
    Hp, Wp = padded_hw(H, W, window_size)
    nh, nw = Hp // window_size, Wp // window_size
    if not is_static(H, W) or Hp > H or Wp > W:
        x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
    x = x.view(B, nh, window_size, nw, window_size, C).permute(0, 1, 3, 2, 4, 5)
    return _flatten_copy(x, (-1, window_size, window_size, C)), (Hp, Wp)


def window_unpartition_view(windows: torch.Tensor, window_size: int, pad_hw: Tuple[int, int]) -> torch.Tensor:
    """The windows of :func:`window_partition` as a (B, Hp / ws, ws, Wp / ws, ws, C) view in map order, without
    copying: ``view(B, Hp, Wp, C)`` of a contiguous copy of it is :func:`window_unpartition`'s uncropped map."""
    Hp, Wp = pad_hw
    nh, nw = Hp // window_size, Wp // window_size
    B = windows.shape[0] // (nh * nw)
    return windows.view(B, nh, nw, window_size, window_size, -1).permute(0, 1, 3, 2, 4, 5)


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
    x = _flatten_copy(x, (B, Hp, Wp, -1))
    if not is_static(H, W, Hp, Wp):
        return crop_hw(x, H, W)
    if Hp > H or Wp > W:
        x = x[:, :H, :W, :]
        if contiguous:
            x = x.contiguous()
    return x
