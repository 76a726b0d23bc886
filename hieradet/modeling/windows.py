"""Window partitioning and pooling of BHWC maps, the shape arithmetic of windowed attention and of Hiera's
stage transitions (query / shortcut pooling)."""

from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ["avg_pool_hw", "pool_hw", "window_partition", "window_unpartition"]


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
