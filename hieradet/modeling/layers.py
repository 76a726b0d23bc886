"""Small layers shared by every backbone (HieraDet, ViT, HiViT) and the MAE decoder: LayerNorm, DropPath, the
MLP, the patch-embedding stem and the ViT / Hiera weight init. Everything works on BHWC tensors."""

import threading
from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DropPath",
    "LayerNorm",
    "Mlp",
    "PatchEmbed",
    "clear_workspace",
    "init_weights",
    "needs_grad",
    "set_workspace_enabled",
    "workspace_linear",
]

# All references use LayerNorm with eps 1e-6.
LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will record an op on ``tensors`` (inference paths may then work in place)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class _Workspace(threading.local):
    """Per-thread reusable CPU buffers for inference, one per (slot, dtype), grown on demand.

    A slot holds a block-internal tensor that never leaves the module that writes it: ``"relpos"`` the
    attention's relpos mask, ``"qkv"`` the qkv projection, ``"hidden"`` the MLP's hidden activation. Fresh
    multi-megabyte CPU allocations are page-faulted in on every forward, which costs about as much as the
    arithmetic written into them; the caching allocators of GPUs already reuse memory, so GPUs get no buffer.
    """

    enabled = True

    def __init__(self):
        self.buffers = {}

    def get(self, numel: int, dtype: torch.dtype, device: torch.device, slot: str) -> Optional[torch.Tensor]:
        if not _Workspace.enabled or device.type != "cpu":
            return None
        if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
            return None  # a graph must not capture the buffer
        buf = self.buffers.get((slot, dtype))
        if buf is None or buf.numel() < numel:
            buf = None  # free the old buffer before allocating the larger one
            with torch.inference_mode(False):  # a normal tensor: writable in and out of inference mode
                buf = torch.empty(numel, dtype=dtype, device=device)
            self.buffers[(slot, dtype)] = buf
        return buf[:numel]


_WORKSPACE = _Workspace()


def clear_workspace() -> None:
    """Free this thread's inference workspace (the relpos mask, qkv and MLP hidden buffers)."""
    _WORKSPACE.buffers.clear()


def set_workspace_enabled(enabled: bool) -> None:
    """Turn the inference workspace on (default) or off (fresh tensors on every forward)."""
    _Workspace.enabled = bool(enabled)
    if not enabled:
        clear_workspace()


def workspace_linear(linear: nn.Linear, x: torch.Tensor, slot: str) -> torch.Tensor:
    """``linear(x)``; at inference on CPU written into the workspace ``slot`` (the result is overwritten by the
    next call with that slot, so the caller must consume it before then and never return it).

    The same ``addmm`` as ``F.linear`` computes (bitwise equal); a plain call is made with autograd, under
    autocast, for a ``Linear`` subclass or one with hooks, for non-contiguous input or on GPU.
    """
    if (
        needs_grad(x, *linear.parameters())
        or type(linear) is not nn.Linear
        or linear.bias is None
        or linear._forward_hooks
        or linear._forward_pre_hooks
        or nn.modules.module._global_forward_hooks
        or nn.modules.module._global_forward_pre_hooks
        or x.dtype != linear.weight.dtype
        or not x.is_contiguous()
        or torch.is_autocast_enabled(x.device.type)
    ):
        return linear(x)
    n = x.numel() // x.shape[-1]
    buf = _WORKSPACE.get(n * linear.out_features, x.dtype, x.device, slot)
    if buf is None:
        return linear(x)
    torch.addmm(linear.bias, x.view(n, x.shape[-1]), linear.weight.t(), out=buf.view(n, linear.out_features))
    return buf.view(*x.shape[:-1], linear.out_features)


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
        if type(self.act) is not nn.GELU:
            return self.fc2(self.act(self.fc1(x)))
        if not needs_grad(x, *self.fc1.parameters()):
            # inference: the hidden activation in the reused workspace (CPU), GELU in place on it
            h = workspace_linear(self.fc1, x, "hidden")
            return self.fc2(torch._C._nn.gelu_(h, approximate=self.act.approximate))
        h = self.fc1(x)
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
