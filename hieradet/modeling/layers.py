"""Small layers shared by every backbone (HieraDet, ViT, HiViT) and the MAE decoder: LayerNorm, DropPath, the
MLP, the patch-embedding stem and the ViT / Hiera weight init. Everything works on BHWC tensors."""

import threading
from functools import partial
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .windows import capturing_graph, padded_hw, window_partition, window_unpartition

__all__ = [
    "DropPath",
    "LayerNorm",
    "Mlp",
    "PatchEmbed",
    "clear_workspace",
    "has_hooks",
    "init_weights",
    "needs_grad",
    "norm_linear",
    "norm_linear_ok",
    "observer_hook",
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
        if capturing_graph():
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


def observer_hook(fn):
    """Marks a module hook as an observer (it records, e.g. which module is running, but reads no input or output
    of the module it is on), so that :func:`has_hooks` ignores it and the fused paths stay on; returns ``fn``."""
    fn.observes_only = True
    return fn


def has_hooks(*modules: Optional[nn.Module]) -> bool:
    """Whether a forward or backward hook is registered on any of ``modules`` or globally, other than an
    :func:`observer_hook`: the fused paths below skip the modules' ``forward`` calls, so they are taken only when
    no hook expects those calls."""
    g = nn.modules.module
    tables = [g._global_forward_hooks, g._global_forward_pre_hooks, g._global_backward_hooks]
    for m in modules:
        if m is not None:
            tables += [m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks]
    return any(not getattr(fn, "observes_only", False) for table in tables for fn in table.values())


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
        or has_hooks(linear)
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


def _linear_grads(grad_out: torch.Tensor, a: torch.Tensor, weight: torch.Tensor, needs) -> Tuple:
    """``(grad_a, grad_weight, grad_bias)`` of ``F.linear(a, weight, bias)`` for the upstream ``grad_out``; a
    gradient that ``needs`` (three bools) does not ask for is None."""
    g2 = grad_out.reshape(-1, grad_out.shape[-1])
    grad_a = grad_out.matmul(weight) if needs[0] else None
    grad_w = g2.t().mm(a.reshape(-1, a.shape[-1])) if needs[1] else None
    grad_b = g2.sum(0) if needs[2] else None
    return grad_a, grad_w, grad_b


class _NormLinear(torch.autograd.Function):
    """``linear(partition(layer_norm(x)))`` (and optionally a second ``linear2(layer_norm(x))`` of the same
    normalised map), keeping for backward only ``x`` and the LayerNorm's per-token mean and 1 / std.

    Plain autograd keeps the normalised map (and, in a windowed block, its zero-padded window-partitioned copy)
    as the linear's input besides the LayerNorm's own input ``x``; here backward recomputes the normalised map
    (one LayerNorm) for the weight gradients instead. ``window_size`` 0 means no partition; with a window the
    padding tokens are zeros of the *normalised* map (as :func:`.windows.window_partition` pads it), so their
    gradient is dropped when the input gradient is unpartitioned. The forward runs exactly the ops of
    ``nn.LayerNorm``, ``window_partition`` and ``nn.Linear`` (bitwise equal outputs).
    """

    @staticmethod
    def forward(ctx, x, norm_w, norm_b, eps, window_size, w1, b1, w2, b2):
        y, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), norm_w, norm_b, eps)
        a1 = window_partition(y, window_size)[0] if window_size else y
        out1 = F.linear(a1, w1, b1)
        ctx.eps, ctx.window_size = eps, window_size
        ctx.has_b1, ctx.has_b2 = b1 is not None, b2 is not None
        ctx.save_for_backward(x, mean, rstd, norm_w, norm_b, w1, w2)
        if w2 is None:
            return out1
        return out1, F.linear(y, w2, b2)

    @staticmethod
    def backward(ctx, grad1, grad2=None):
        x, mean, rstd, norm_w, norm_b, w1, w2 = ctx.saved_tensors
        need = ctx.needs_input_grad
        H, W = x.shape[1:3]
        ws = ctx.window_size
        # the normalised map, recomputed (the same kernel as the forward: the same values)
        y = torch.native_layer_norm(x, (x.shape[-1],), norm_w, norm_b, ctx.eps)[0]
        a1 = window_partition(y, ws)[0] if ws else y
        grad_a1, grad_w1, grad_b1 = _linear_grads(grad1, a1, w1, (True, need[5], need[6] and ctx.has_b1))
        del a1
        if ws:
            grad_y = window_unpartition(grad_a1, ws, padded_hw(H, W, ws), (H, W))
        else:
            grad_y = grad_a1
        del grad_a1
        grad_w2 = grad_b2 = None
        if w2 is not None and grad2 is not None:
            grad_a2, grad_w2, grad_b2 = _linear_grads(grad2, y, w2, (True, need[7], need[8] and ctx.has_b2))
            grad_y = grad_y + grad_a2
        del y
        grad_x, grad_nw, grad_nb = torch.ops.aten.native_layer_norm_backward(
            grad_y.contiguous(), x, (x.shape[-1],), mean, rstd, norm_w, norm_b, [need[0], need[1], need[2]]
        )
        return grad_x, grad_nw, grad_nb, None, None, grad_w1, grad_b1, grad_w2, grad_b2


def norm_linear_ok(norm: nn.Module, x: torch.Tensor, *linears: Optional[nn.Module]) -> bool:
    """Whether :func:`norm_linear` may replace ``linear(norm(x))``: training with autograd on CPU (not under
    autocast, tracing or compilation), ``norm`` a plain affine ``nn.LayerNorm`` over the last axis and each
    linear a plain ``nn.Linear``, all in ``x``'s dtype. GPU training and inference keep the plain modules."""
    if (
        x.device.type != "cpu"
        or type(norm) is not nn.LayerNorm
        or norm.weight is None
        or norm.bias is None
        or len(norm.normalized_shape) != 1
        or x.dim() != 4
        or torch.is_autocast_enabled("cpu")
        or capturing_graph()
        or has_hooks(norm, *linears)
    ):
        return False
    params = [norm.weight, norm.bias]
    for lin in linears:
        if lin is None:
            continue
        if type(lin) is not nn.Linear:
            return False
        params += [p for p in (lin.weight, lin.bias) if p is not None]
    return needs_grad(x, *params) and all(p.dtype == x.dtype for p in params)


def norm_linear(
    x: torch.Tensor,
    norm: nn.LayerNorm,
    linear: nn.Linear,
    window_size: int = 0,
    linear2: Optional[nn.Linear] = None,
):
    """``linear(window_partition(norm(x)))`` of a BHWC map (no partition when ``window_size`` is 0), and with
    ``linear2`` also ``linear2(norm(x))``, keeping only ``x`` and the norm's statistics for backward (the
    normalised map is recomputed there). Check :func:`norm_linear_ok` first; the outputs equal the plain
    modules' bitwise. The modules' forward hooks are not called (their parameters are used directly).

    Returns:
        ``linear``'s output, or the pair of both outputs when ``linear2`` is given.
    """
    return _NormLinear.apply(
        x,
        norm.weight,
        norm.bias,
        norm.eps,
        window_size,
        linear.weight,
        linear.bias,
        None if linear2 is None else linear2.weight,
        None if linear2 is None else linear2.bias,
    )


class Mlp(nn.Module):
    """Two-layer MLP (``fc1``/``fc2``, the key names of official Hiera, MAE and detectron2's ViT)."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: Optional[int] = None, act_layer=nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim)

    def forward(self, x: torch.Tensor, hidden: bool = False) -> torch.Tensor:
        """Args:
        x: the input (..., dim), or with ``hidden=True`` fc1's output computed by the caller
            (:class:`.blocks.Block` fuses fc1 with the norm before it in CPU training).
        """
        if hidden:
            return self._from_hidden(x)
        if type(self.act) is not nn.GELU:
            return self.fc2(self.act(self.fc1(x)))
        if not needs_grad(x, *self.fc1.parameters()):
            # inference: the hidden activation in the reused workspace (CPU), GELU in place on it
            h = workspace_linear(self.fc1, x, "hidden")
            return self.fc2(torch._C._nn.gelu_(h, approximate=self.act.approximate))
        return self._from_hidden(self.fc1(x))

    def _from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        """``fc2(act(h))``; with autograd on CPU and GELU, the GELU output is recomputed in backward, not kept."""
        if (
            type(self.act) is nn.GELU
            and needs_grad(h, *self.fc2.parameters())
            and h.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")
            and type(self.fc2) is nn.Linear
            and not has_hooks(self.act, self.fc2)
        ):
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
