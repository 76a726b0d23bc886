"""Small layers shared by every backbone (HieraDet, ViT, HiViT) and the MAE decoder: LayerNorm, DropPath, the
MLP, the patch-embedding stem and the ViT / Hiera weight init. Everything works on BHWC tensors."""

from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DropPath", "LayerNorm", "Mlp", "PatchEmbed", "init_weights", "needs_grad"]

# All references use LayerNorm with eps 1e-6.
LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will record an op on ``tensors`` (inference paths may then work in place)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


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


class _GeluLinear(torch.autograd.Function):
    """``linear(gelu(h), weight, bias)`` keeping only ``h`` for backward: GELU is recomputed there instead of
    keeping its output (the MLP's hidden-size activation) alive between forward and backward."""

    @staticmethod
    def forward(ctx, h, weight, bias, approximate: str):
        ctx.approximate = approximate
        ctx.save_for_backward(h, weight)
        return F.linear(F.gelu(h, approximate=approximate), weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        h, weight = ctx.saved_tensors
        grad_h = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_h = torch.ops.aten.gelu_backward(grad_out.matmul(weight), h, approximate=ctx.approximate)
        if ctx.needs_input_grad[1]:
            a = F.gelu(h, approximate=ctx.approximate)
            grad_w = grad_out.reshape(-1, grad_out.shape[-1]).t().mm(a.reshape(-1, a.shape[-1]))
        if ctx.needs_input_grad[2]:
            grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return grad_h, grad_w, grad_b, None


class Mlp(nn.Module):
    """Two-layer MLP (``fc1``/``fc2``, the key names of official Hiera, MAE and detectron2's ViT)."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: Optional[int] = None, act_layer=nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if type(self.act) is not nn.GELU:
            return self.fc2(self.act(h))
        if not needs_grad(h):
            # inference: in place (same kernel, no second hidden-size allocation)
            return self.fc2(torch._C._nn.gelu_(h, approximate=self.act.approximate))
        if h.device.type == "cpu" and not torch.is_autocast_enabled("cpu"):
            # training on CPU: GELU recomputed in backward instead of keeping its output
            return _GeluLinear.apply(h, self.fc2.weight, self.fc2.bias, self.act.approximate)
        return self.fc2(self.act(h))


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
