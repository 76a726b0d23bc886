"""Absolute position embeddings for window-attention backbones ("absolute win").

An embedding is described by two learned grids, either of which may be absent:

* ``window_embed`` (1, C, wh, ww): *tiled* over the feature map, top-left aligned, cropped at the
  bottom/right edges. It is aligned with window attention by construction.
* ``global_embed`` (1, C, gh, gw): *interpolated* (bicubic) to the feature map.

``pretrain_size`` is the token grid the model was pretrained on (Hiera: 56x56 at 224 px, ViT: 14x14).
The *pretrain embedding* is ``tile(window_embed) + interpolate(global_embed)`` at that size; this is
the embedding every pretrained window saw. How it is brought to a feature map of another size is the
``mode``:

``"abswin"`` (default, the paper's detection method, applied recursively)
    the pretrain embedding itself becomes a window embedding and is tiled over the map. With HieraDet's
    stage-3/4 windows (14 at stride 16, 7 at stride 32, i.e. 224 px) every detection window covers
    exactly one pretrain-size tile and so sees the embedding it was pretrained with.
``"abswin_single"``
    one level only: ``window_embed`` tiled and ``global_embed`` interpolated straight to the map
    (what Hiera-abs-win classification, timm and SAM 2 do).
``"interpolate"``
    the bugged baseline: the pretrain embedding is bicubic-interpolated to the map (Hiera, ViTDet).
``"auto"``
    the loaded checkpoint's natural mode: :func:`hieradet.checkpoint.apply_checkpoint_layout` replaces it
    in the config before the model is built; a model built with it (no checkpoint) runs as ``"abswin"``.

An original Hiera (a full 56x56 grid) or an MAE ViT (its 14x14 grid) is expressed as
``window_size=pretrain_size, global_size=None``: the grid is the tile.

Window alignment: a tiled grid helps window attention only when the windows line up with the tiles, i.e.
a window spans a whole number of tiles or a whole fraction of one (per axis, one divides the other). A
pretraining size of 256 px gives a 64x64 stride-4 tile, which HieraDet's stage-3 window of 14 tokens at
stride 16 (56 stride-4 tokens) cuts across. :func:`check_window_alignment` refuses such models at build
time; global attention and ``"interpolate"`` are unconstrained.
"""

from typing import Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers import needs_grad
from .windows import capturing_graph, ceil_div, is_static

__all__ = [
    "AbsWinPosEmbed",
    "tile_embed",
    "interpolate_embed",
    "check_window_alignment",
    "grid_pos_embed",
    "POS_EMBED_MODES",
]

POS_EMBED_MODES = ("abswin", "abswin_single", "interpolate", "auto")


def _pair(x) -> Optional[Tuple[int, int]]:
    if x is None:
        return None
    if isinstance(x, int):
        return (x, x)
    return (int(x[0]), int(x[1]))


def tile_embed(embed: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """Repeat a (1, C, h, w) grid over an ``hw`` map from the top-left corner, cropping the rest.

    ``hw`` may be symbolic (a traced graph then tiles for the actual input size)."""
    h, w = embed.shape[-2:]
    if not is_static(*hw):  # gather rows / columns i mod h: no guard on how the tiles meet the edge
        rows = torch.arange(hw[0], device=embed.device) % h
        cols = torch.arange(hw[1], device=embed.device) % w
        return embed.index_select(2, rows).index_select(3, cols)
    reps = (ceil_div(hw[0], h), ceil_div(hw[1], w))
    if reps != (1, 1):
        embed = embed.tile(1, 1, reps[0], reps[1])
    return embed[:, :, : hw[0], : hw[1]]


def interpolate_embed(embed: torch.Tensor, hw: Tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """Bicubic resize of a (1, C, h, w) grid to ``hw`` (identity when the size already matches; a symbolic
    ``hw`` is always resized, which equals the identity at the same size)."""
    if is_static(*hw) and tuple(embed.shape[-2:]) == tuple(hw):
        return embed
    return F.interpolate(embed, size=hw, mode="bicubic", align_corners=False, antialias=antialias)


class AbsWinPosEmbed(nn.Module):
    """Learned absolute position embedding made of a tiled window grid and an interpolated global grid.

    Args:
        dim (int): channels.
        pretrain_size (int or tuple): token grid of the pretraining resolution.
        window_size (int or tuple or None): size of the tiled ``window_embed``; ``None`` for none.
        global_size (int or tuple or None): size of the interpolated ``global_embed``; ``None`` for none.
        mode (str): one of ``"abswin"``, ``"abswin_single"``, ``"interpolate"``, ``"auto"`` (see the module doc).
        antialias (bool): antialiased bicubic for ``global_embed`` when it is downsampled. timm's
            abs-win Hiera uses ``True``, SAM 2 and the original models ``False`` (our default); the two
            differ numerically, so a checkpoint should be run in the mode it was trained with.
        init_std (float): std of the truncated-normal init (0 gives zeros, as SAM 2 does).
    """

    def __init__(
        self,
        dim: int,
        pretrain_size,
        window_size=None,
        global_size=None,
        mode: str = "abswin",
        antialias: bool = False,
        init_std: float = 0.02,
    ):
        super().__init__()
        if mode not in POS_EMBED_MODES:
            raise ValueError(f"pos_embed mode must be one of {POS_EMBED_MODES}, got {mode!r}")
        self.pretrain_size = _pair(pretrain_size)
        window_size, global_size = _pair(window_size), _pair(global_size)
        if window_size is None and global_size is None:
            raise ValueError("AbsWinPosEmbed needs a window_size, a global_size, or both")
        for name, size in (
            ("pretrain_size", self.pretrain_size),
            ("window_size", window_size),
            ("global_size", global_size),
        ):
            if size is not None and min(size) <= 0:
                raise ValueError(f"{name} must be positive, got {size}")
        self.mode = "abswin" if mode == "auto" else mode  # "auto" that no checkpoint layout replaced
        self.configured_mode = mode  # "auto": a loaded layout record sets the mode (hieradet.modeling.layout_record)
        self.antialias = antialias
        self.window_embed = nn.Parameter(torch.zeros(1, dim, *window_size)) if window_size else None
        self.global_embed = nn.Parameter(torch.zeros(1, dim, *global_size)) if global_size else None
        for p in (self.window_embed, self.global_embed):
            if p is not None and init_std > 0:
                nn.init.trunc_normal_(p, std=init_std)

    def _single_level(self, hw: Tuple[int, int]) -> torch.Tensor:
        out = 0
        if self.window_embed is not None:
            out = tile_embed(self.window_embed, hw)
        if self.global_embed is not None:
            out = out + interpolate_embed(self.global_embed, hw, self.antialias)
        return out

    def pretrain_embed(self) -> torch.Tensor:
        """The (1, C, h, w) embedding at the pretraining grid size."""
        return self._single_level(self.pretrain_size)

    def embed(self, hw: Tuple[int, int], mode: Optional[str] = None) -> torch.Tensor:
        """The (1, C, h, w) embedding of an ``hw`` feature map in ``mode`` (default: ``self.mode``).

        Asking for another mode computes that mode's embedding from the same weights and leaves the module
        unchanged (e.g. to compare ``"abswin"`` with ``"interpolate"``).
        """
        mode = self.mode if mode is None else mode
        if mode not in POS_EMBED_MODES:
            raise ValueError(f"pos_embed mode must be one of {POS_EMBED_MODES}, got {mode!r}")
        # no int(): a symbolic size (torch.export / torch.compile) would be specialised to the traced one
        hw = (hw[0], hw[1])
        if mode == "abswin_single":
            return self._single_level(hw)
        if mode == "interpolate":
            return interpolate_embed(self.pretrain_embed(), hw)
        return tile_embed(self.pretrain_embed(), hw)  # "abswin"

    def forward(self, hw: Tuple[int, int], mode: Optional[str] = None) -> torch.Tensor:
        """The embedding of an ``hw`` feature map as a contiguous (1, h, w, C) tensor (BHWC, ready to add);
        ``mode`` as in :meth:`embed`.

        Without autograd (inference) the result is cached: it is recomputed only when the size, the mode, the
        weights (their storage or in-place version: an optimizer step, ``load_state_dict``), their dtype or
        device change. The cached tensor is shared between calls: add it, never modify it in place.
        Add it as ``pos + x``: the sum then takes ``pos``'s contiguous layout even when ``x`` is the BHWC view of
        a channels-first convolution output (``x + pos`` would keep ``x``'s strides, and every later elementwise
        op on the map would pay for the transposed access).
        """
        params = [p for p in (self.window_embed, self.global_embed) if p is not None]
        if needs_grad(*params) or not is_static(*hw) or capturing_graph():  # nothing cached in a graph
            return self.embed(hw, mode).permute(0, 2, 3, 1).contiguous()
        mode = self.mode if mode is None else mode
        key = (int(hw[0]), int(hw[1]), mode, tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params))
        cache = self.__dict__.get("_inference_cache")
        # the parameter objects are kept with the key, so a replaced parameter cannot reuse a freed address
        if cache is None or cache[0] != key or any(a is not b for a, b in zip(cache[1], params)):
            with torch.inference_mode(False), torch.no_grad():  # a normal tensor: usable in and out of inference mode
                cache = (key, tuple(params), self.embed(hw, mode).permute(0, 2, 3, 1).contiguous())
            self.__dict__["_inference_cache"] = cache  # not a buffer: no state-dict entry, not moved by .to()
        return cache[2]

    def tiled_grid(self) -> Optional[Tuple[int, int]]:
        """The grid this embedding tiles over the map in its mode, which windows must line up with: the
        pretraining grid (``"abswin"``), the window embedding (``"abswin_single"``), or ``None`` (nothing
        is tiled: ``"interpolate"``, or a global grid alone)."""
        if self.mode == "interpolate":
            return None
        if self.mode == "abswin_single":
            return None if self.window_embed is None else tuple(self.window_embed.shape[-2:])
        return self.pretrain_size  # "abswin" (and a checkpoint-chosen mode resolved to it)

    def extra_repr(self) -> str:
        win = None if self.window_embed is None else tuple(self.window_embed.shape[-2:])
        glb = None if self.global_embed is None else tuple(self.global_embed.shape[-2:])
        return (
            f"mode={self.mode}, pretrain_size={self.pretrain_size}, window={win}, global={glb}, "
            f"antialias={self.antialias}"
        )


def check_window_alignment(
    embed: AbsWinPosEmbed,
    windows: Iterable[Tuple[str, int, int]],
    owner: str,
    unit: str = "tokens",
    hint: str = "",
) -> None:
    """Raise ``ValueError`` unless every attention window lines up with the tiles of ``embed``.

    Args:
        embed: the model's position embedding; only its :meth:`~AbsWinPosEmbed.tiled_grid` matters.
        windows: ``(label, window, scale)`` for each window size in use: ``window`` tokens per side, each
            token ``scale`` embedding tokens wide (the ratio of their strides). Leave out global attention.
        owner: model name for the message. unit: what an embedding token is called (``"stride-4 tokens"``).
        hint: what to do instead, appended to the message.
    """
    tile = embed.tiled_grid()
    if tile is None:
        return
    side = str(tile[0]) if tile[0] == tile[1] else str(tuple(tile))
    bad = []
    for label, window, scale in windows:
        span = int(window) * int(scale)
        if window <= 0 or all(span % t == 0 or t % span == 0 for t in tile):
            continue
        at = f" ({window} x {scale})" if scale != 1 else ""
        bad.append(f"{label} window {window} spans {span}{at} {unit}, neither a multiple nor a divisor of {side}")
    if not bad:
        return
    what = "pretraining grid" if embed.mode != "abswin_single" else "window embedding"
    raise ValueError(
        f"{owner}: pos_embed={embed.mode!r} tiles the {tile[0]}x{tile[1]} {what} ({unit}) over the feature map, "
        "so every attention window must line up with the tiles (span a whole number of tiles or a whole "
        f"fraction of one); {'; '.join(bad)}. {hint}".rstrip()
    )


def grid_pos_embed(
    name: str, dim: int, pretrain_img_size: int, patch_size: int, window_size: int, windowed: bool, mode: str
) -> AbsWinPosEmbed:
    """The embedding of a single-resolution backbone (ViT, HiViT's main stage): its pretrained
    ``pretrain_img_size // patch_size`` grid is the tile. ``windowed``: some blocks attend in ``window_size``
    windows, which must then line up with the tiles (:func:`check_window_alignment`; ``name`` heads the error)."""
    grid = pretrain_img_size // patch_size
    embed = AbsWinPosEmbed(dim, pretrain_size=grid, window_size=grid, mode=mode)
    if window_size and windowed:
        check_window_alignment(
            embed,
            [("the windowed blocks'", window_size, 1)],
            owner=f"{name} (pretrain_img_size={pretrain_img_size}, patch_size={patch_size}, window_size={window_size})",
            hint=f"Use window_size={grid} (or a multiple or divisor of it), or pos_embed='interpolate'.",
        )
    return embed
