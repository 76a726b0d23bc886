"""Sparse masked-autoencoder pretraining for HieraDet (Ryali et al. 2023 "Hiera", Sec. 3-4 and App. A).

* **Mask units.** The image is cut into ``mask_unit`` x ``mask_unit`` pixel units (32 px: 8x8 tokens at
  stride 4, 4x4 at stride 8, 2x2 at stride 16, 1x1 at stride 32). A random ``mask_ratio`` of the units of
  every image is deleted; every image keeps the same number of units.
* **Sparse encoder.** Only the kept units go through the backbone. The tokens are held in a *unit-stacked*
  map ``(B, kept * u, u, C)``: the kept units, each ``u x u`` tokens, one below the other. On that map
  HieraDet's own blocks compute exactly what they compute on the full image, because
  - a windowed block whose window is the unit side (Hiera's mask-unit attention, stages 1-2) partitions
    the stacked map into exactly the units;
  - a 2x2 query pooling never crosses a unit (``u`` is even until the last pooling);
  - a global block (stages 3-4) attends over all kept tokens of the image, in any order (no relative
    position tables: the order does not matter).
  The stem convolution (kernel 7, stride 4) would read pixels of neighbouring deleted units, so the
  deleted pixels are zeroed first (as Hiera's masked patch embedding does). Deleted units therefore never
  influence any kept token, in any stage.
* **Multi-scale decoder.** As in Ryali et al. 2023, query pooling before the last stage is removed for
  pretraining (build the encoder with ``q_pool=2``), so the last stage is at stride 16 (the stage-3
  resolution, 2x2 tokens per unit). Every earlier stage is pooled to that resolution per unit by a
  kernel = stride convolution and added to the last stage's output (multi-scale fusion); a light ViT
  decoder then sees the kept tokens plus a mask token at every deleted position and predicts the
  16x16-pixel patch of each stride-16 token.
* **Loss.** Mean squared error on the deleted units only, against per-patch normalised pixels
  (``norm_pix_loss``: each 16x16x3 target patch minus its mean, over its std).

Position embeddings are HieraDet's :class:`~hieradet.modeling.pos_embed.AbsWinPosEmbed`: the full grid
(``"interpolate"``, as Ryali et al. 2023 pretrain: ``pos_embed_window=img_size // 4, pos_embed_global=None``) or
absolute win (8x8 window + a global grid of one token per mask unit, 7x7 at 224 px; Bolya et al. 2024, Sec. 3).
The encoder is a plain :class:`~hieradet.modeling.HieraDet`, so its state dict is the detection backbone's
(:func:`hieradet.pretrain.checkpoint.backbone_checkpoint`).
"""

from typing import List, Optional, Tuple

import torch
from torch import nn

from ..modeling.blocks import Block
from ..modeling.hieradet import HieraDet
from ..modeling.layers import LayerNorm, init_weights

__all__ = [
    "HieraMAE",
    "random_unit_mask",
    "units_to_grid",
    "grid_to_units",
    "check_mask_ratio",
    "check_img_size",
    "unit_sides",
]


def check_mask_ratio(mask_ratio: float) -> float:
    """Returns ``mask_ratio`` as a float; raises unless it lies in [0, 1)."""
    mask_ratio = float(mask_ratio)
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1) (the fraction of mask units deleted), got {mask_ratio}")
    return mask_ratio


def check_img_size(img_size, mask_unit: int) -> Tuple[int, int]:
    """``(h, w)`` of ``img_size`` (int or pair); raises unless both are positive multiples of ``mask_unit``."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
    if h <= 0 or w <= 0 or h % mask_unit or w % mask_unit:
        raise ValueError(
            f"image size {h}x{w} is not a multiple of the {mask_unit}-px mask unit; use e.g. "
            f"{max(1, round(h / mask_unit)) * mask_unit}x{max(1, round(w / mask_unit)) * mask_unit}"
        )
    return h, w


def unit_sides(encoder: HieraDet, mask_unit: int) -> List[int]:
    """Side of one mask unit in tokens at the input of every block, plus after the last one.

    Raises ``ValueError`` when the encoder cannot run sparsely: a unit that is not a whole number of tokens,
    a pooling that would split a unit, a window that is neither global (0) nor the unit, or a block with
    relative position tables (their bias depends on the token layout).
    """
    stride = encoder.patch_embed.proj.stride[0]
    if mask_unit % stride:
        raise ValueError(f"mask_unit={mask_unit} px is not a multiple of the patch stride {stride}")
    side = mask_unit // stride
    sides = [side]
    for i, blk in enumerate(encoder.blocks):
        if blk.window_size not in (0, side):
            raise ValueError(
                f"block {i} attends in {blk.window_size}x{blk.window_size} windows, but a mask unit is {side}x{side} "
                "tokens there: sparse MAE needs mask-unit windows or global attention (build the pretraining "
                "encoder with window_size=(8, 4, 0, 0))"
            )
        if blk.attn.use_rel_pos:
            raise ValueError(f"block {i} has relative position tables; pretrain with relpos='none'")
        if side % blk.q_stride:
            raise ValueError(f"block {i} pools by {blk.q_stride} a unit of {side}x{side} tokens")
        side //= blk.q_stride
        sides.append(side)
    return sides


def random_unit_mask(batch: int, num_units: int, mask_ratio: float, generator=None, device=None) -> torch.Tensor:
    """A (batch, num_units) boolean mask, ``True`` = kept; every row keeps ``max(1, int(N * (1 - ratio)))``."""
    num_keep = max(1, int(num_units * (1.0 - check_mask_ratio(mask_ratio))))
    noise = torch.rand(batch, num_units, generator=generator, device=device)
    keep = noise.argsort(dim=1)[:, :num_keep]
    mask = torch.zeros(batch, num_units, dtype=torch.bool, device=device)
    return mask.scatter_(1, keep, True)


def grid_to_units(x: torch.Tensor, u: int) -> torch.Tensor:
    """(B, H, W, C) map -> (B, (H/u) * (W/u), u, u, C) units in raster order."""
    B, H, W, C = x.shape
    x = x.view(B, H // u, u, W // u, u, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (H // u) * (W // u), u, u, C)


def units_to_grid(x: torch.Tensor, units_hw: Tuple[int, int]) -> torch.Tensor:
    """(B, nh * nw, u, u, C) units in raster order -> (B, nh * u, nw * u, C) map."""
    B, _, u, _, C = x.shape
    nh, nw = units_hw
    return x.view(B, nh, nw, u, u, C).permute(0, 1, 3, 2, 4, 5).reshape(B, nh * u, nw * u, C)


class HieraMAE(nn.Module):
    """Hiera's sparse MAE around a :class:`HieraDet` encoder.

    Args:
        encoder (HieraDet): the backbone to pretrain; its windows must be the mask units or global (e.g.
            ``window_size=(8, 4, 0, 0)``), no relative position tables (``relpos="none"``), and as in
            Ryali et al. 2023 no query pooling before the last stage (``q_pool=2``).
        img_size (int): pretraining image size (a multiple of ``mask_unit``).
        mask_unit (int): mask-unit side in pixels (32).
        mask_ratio (float): fraction of units deleted, in [0, 1) (0.6 for images in Ryali et al. 2023).
        decoder_dim, decoder_depth, decoder_heads (int): the ViT decoder (512 / 8 / 16 in the paper).
        norm_pix_loss (bool): per-patch normalised pixel targets.
        multi_scale (bool): fuse every stage into the decoder input (Ryali et al. 2023, Tab. 3a).
    """

    def __init__(
        self,
        encoder: HieraDet,
        img_size: int = 224,
        mask_unit: int = 32,
        mask_ratio: float = 0.6,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
        multi_scale: bool = True,
    ):
        super().__init__()
        if not isinstance(encoder, HieraDet):
            raise TypeError(f"HieraMAE needs a HieraDet encoder, got {type(encoder).__name__}")
        self.mask_ratio = check_mask_ratio(mask_ratio)
        self.mask_unit = int(mask_unit)
        self.img_size = check_img_size(img_size, self.mask_unit)
        self.encoder = encoder
        self.sides = unit_sides(encoder, self.mask_unit)
        self.norm_pix_loss = norm_pix_loss
        self.multi_scale = multi_scale

        ends = list(encoder.stage_ends)
        dims = [encoder.blocks[e].dim_out for e in ends]
        self.stage_sides = [self.sides[e + 1] for e in ends]
        out_side, out_dim = self.stage_sides[-1], dims[-1]
        self.pred_stride = self.mask_unit // out_side  # 16 px with q_pool=2
        self.fusion = nn.ModuleList()
        if multi_scale:
            for d, s in zip(dims[:-1], self.stage_sides[:-1]):
                k = s // out_side
                self.fusion.append(nn.Conv2d(d, out_dim, kernel_size=k, stride=k))
        self.encoder_norm = LayerNorm(out_dim)
        self.decoder_embed = nn.Linear(out_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, 1, decoder_dim))
        grid = (self.img_size[0] // self.pred_stride, self.img_size[1] // self.pred_stride)
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, grid[0], grid[1], decoder_dim))
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_dim, decoder_heads, window_size=0, norm_layer=LayerNorm)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.pred_stride**2 * 3)
        for m in [self.fusion, self.encoder_norm, self.decoder_embed, self.decoder_blocks, self.decoder_norm]:
            m.apply(init_weights)
        nn.init.trunc_normal_(self.decoder_pred.weight, std=0.02)
        nn.init.zeros_(self.decoder_pred.bias)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos_embed, std=0.02)

    # ------------------------------------------------------------------ encoder
    def _units_hw(self, images: torch.Tensor) -> Tuple[int, int]:
        if images.dim() != 4:
            raise ValueError(f"HieraMAE expects (B, C, H, W) images, got shape {tuple(images.shape)}")
        h, w = check_img_size(tuple(images.shape[-2:]), self.mask_unit)
        return h // self.mask_unit, w // self.mask_unit

    def encode(self, images: torch.Tensor, mask: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Runs the encoder on the kept units only.

        Args:
            images: (B, 3, H, W), H and W multiples of ``mask_unit``.
            mask: (B, N) boolean, ``True`` = kept, the same count in every row (N = number of units).
        Returns:
            the output of every stage as (B, kept, u, u, C) units, and the kept unit indexes (B, kept), ascending.
        """
        nh, nw = self._units_hw(images)
        B, N = images.shape[0], nh * nw
        if mask.shape != (B, N):
            raise ValueError(f"mask must be (batch, units) = ({B}, {N}), got {tuple(mask.shape)}")
        counts = mask.sum(1)
        if bool((counts != counts[0]).any()) or int(counts[0]) == 0:
            raise ValueError(f"every image must keep the same, nonzero number of units; kept {counts.tolist()}")
        kept = int(counts[0])
        # zero the deleted pixels: the stem convolution overlaps unit borders
        pix = mask.view(B, 1, nh, 1, nw, 1).to(images.dtype)
        x = (images.view(B, -1, nh, self.mask_unit, nw, self.mask_unit) * pix).view_as(images)
        x = self.encoder.patch_embed(x)
        x = x + self.encoder.pos_embed(x.shape[1:3])
        u = self.sides[0]
        units = grid_to_units(x, u)  # B, N, u, u, C
        idx = mask.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :kept].sort(dim=1).values
        units = units.gather(1, idx.view(B, kept, 1, 1, 1).expand(-1, -1, u, u, units.shape[-1]))
        x = units.reshape(B, kept * u, u, -1)
        outputs = []
        for i, blk in enumerate(self.encoder.blocks):
            x = blk(x)
            if i in self.encoder.stage_ends:
                s = self.sides[i + 1]
                outputs.append(x.reshape(B, kept, s, s, x.shape[-1]))
        return outputs, idx

    # ------------------------------------------------------------------ decoder
    def decode(self, stage_outputs: List[torch.Tensor], idx: torch.Tensor, units_hw: Tuple[int, int]) -> torch.Tensor:
        """Kept-unit features -> (B, H / p, W / p, p * p * 3) pixel predictions (p = ``pred_stride``)."""
        x = stage_outputs[-1]
        B, kept, s, _, C = x.shape
        for head, feat in zip(self.fusion, stage_outputs[:-1]):
            f = feat.flatten(0, 1).permute(0, 3, 1, 2)  # B*kept, C_i, u_i, u_i
            x = x + head(f).permute(0, 2, 3, 1).reshape(B, kept, s, s, C)
        x = self.decoder_embed(self.encoder_norm(x))
        D = x.shape[-1]
        N = units_hw[0] * units_hw[1]
        full = self.mask_token.to(x.dtype).expand(B, N, s, s, D).clone()
        full.scatter_(1, idx.view(B, kept, 1, 1, 1).expand(-1, -1, s, s, D), x)
        x = units_to_grid(full, units_hw)
        pos = self.decoder_pos_embed
        if tuple(pos.shape[1:3]) != tuple(x.shape[1:3]):
            pos = nn.functional.interpolate(pos.permute(0, 3, 1, 2), size=x.shape[1:3], mode="bicubic")
            pos = pos.permute(0, 2, 3, 1)
        x = x + pos
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H / p, W / p, p * p * 3) pixel patches, normalised per patch when ``norm_pix_loss``."""
        p = self.pred_stride
        B, C, H, W = images.shape
        t = images.view(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1).reshape(B, H // p, W // p, p * p * C)
        if self.norm_pix_loss:
            mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True)
            t = (t - mean) / (var + 1e-6).sqrt()
        return t

    def forward(self, images: torch.Tensor, mask: Optional[torch.Tensor] = None, generator=None):
        """Args:
            images: (B, 3, H, W) normalised images.
            mask: optional (B, N) kept-unit mask; default: a random one with ``mask_ratio``.
        Returns:
            dict with ``loss`` (MSE on deleted units), ``pred`` (B, H/p, W/p, p*p*3), ``mask`` (B, N).
        """
        units_hw = self._units_hw(images)
        if mask is None:
            mask = random_unit_mask(
                images.shape[0], units_hw[0] * units_hw[1], self.mask_ratio, generator, images.device
            )
        outputs, idx = self.encode(images, mask)
        pred = self.decode(outputs, idx, units_hw)
        target = self.targets(images.float())
        r = self.mask_unit // self.pred_stride  # prediction tokens per unit side
        deleted = (~mask).view(-1, units_hw[0], 1, units_hw[1], 1).expand(-1, -1, r, -1, r)
        deleted = deleted.reshape(mask.shape[0], units_hw[0] * r, units_hw[1] * r).to(pred.dtype)
        per_token = (pred.float() - target).pow(2).mean(-1)
        denom = deleted.sum()
        loss = (per_token * deleted).sum() / denom if denom > 0 else per_token.sum() * 0.0
        return {"loss": loss, "pred": pred, "mask": mask}

    @staticmethod
    def num_kept(num_units: int, mask_ratio: float) -> int:
        return max(1, int(num_units * (1.0 - check_mask_ratio(mask_ratio))))

    def extra_repr(self) -> str:
        return (
            f"img_size={self.img_size}, mask_unit={self.mask_unit}, mask_ratio={self.mask_ratio}, "
            f"pred_stride={self.pred_stride}, unit_sides={self.stage_sides}"
        )
