"""A fused channels-first LayerNorm for the feature pyramids and the ROI heads.

detectron2's :class:`detectron2.layers.batch_norm.LayerNorm` (``norm="LN"``) normalises NCHW tensors over the
channel axis with separate mean / subtract / power / divide / affine ops, and autograd keeps three full-size
intermediates of them for the backward pass. :class:`ChannelLayerNorm` computes the same function (same
``weight`` / ``bias`` parameters and keys, same ``eps``) and, under autograd, keeps only its input and the
per-position mean and inverse standard deviation; its backward recomputes the normalised input from them.
"""

import torch
from detectron2.layers.batch_norm import LayerNorm as _D2LayerNorm

from .windows import capturing_graph

__all__ = ["ChannelLayerNorm", "channel_layer_norm"]


def _statistics(x: torch.Tensor, eps: float):
    """Mean and inverse standard deviation (biased variance) over dim 1, both (N, 1, *spatial)."""
    # x.mean + a centred square is several times faster on CPU than torch.var_mean over a non-innermost dim
    mean = x.mean(1, keepdim=True)
    var = (x - mean).square_().mean(1, keepdim=True)
    return mean, var.add_(eps).rsqrt_()


def _affine_shape(x: torch.Tensor):
    return (-1,) + (1,) * (x.dim() - 2)


def _normalize(x, weight, bias, mean, rstd):
    """``(x - mean) * rstd * weight + bias`` in one fresh tensor (written in place after the subtraction).

    The normalised input is in ``x``'s dtype and the result in the promoted dtype of it and the parameters, as
    detectron2's (e.g. float16 activations under autocast with float32 parameters give float32)."""
    shape = _affine_shape(x)
    xhat = (x - mean).mul_(rstd)
    out_dtype = torch.promote_types(torch.promote_types(x.dtype, weight.dtype), bias.dtype)
    return xhat.to(out_dtype).mul_(weight.view(shape)).add_(bias.view(shape))


class _ChannelLayerNormFunction(torch.autograd.Function):
    """LayerNorm over dim 1 that saves ``x``, ``mean`` and ``rstd`` (no full-size intermediate) for backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        mean, rstd = _statistics(x, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        return _normalize(x, weight, bias, mean, rstd)

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, rstd = ctx.saved_tensors
        shape = _affine_shape(x)
        reduce_dims = (0,) + tuple(range(2, x.dim()))
        xhat = (x - mean).mul_(rstd)
        # d(xhat) = grad * weight; dx = rstd * (d(xhat) - mean_c(d(xhat)) - xhat * mean_c(d(xhat) * xhat))
        gxhat = grad * xhat
        grad_weight = gxhat.sum(reduce_dims) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(reduce_dims) if ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            w = weight.view(shape)
            proj = gxhat.mul_(w).mean(1, keepdim=True)
            del gxhat
            grad_x = grad * w
            proj_grad = grad_x.mean(1, keepdim=True)
            grad_x.sub_(proj_grad).sub_(xhat.mul_(proj)).mul_(rstd)
        return grad_x, grad_weight, grad_bias, None


def channel_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm of a (N, C, *spatial) tensor over its channel axis C, with a per-channel ``weight`` and ``bias``.

    Args:
        x: input of shape (N, C, ...) with at least 2 dims.
        weight, bias: (C,) affine parameters.
        eps: added to the (biased) variance.

    Returns:
        a tensor of ``x``'s shape, contiguous in NCHW order. In eager mode with autograd only ``x``, the mean and
        the inverse standard deviation are kept for backward; under ``torch.compile`` / ``torch.export`` /
        tracing it is written as plain differentiable ops, so the compiler or exporter sees ordinary ops.
    """
    if x.dim() < 2 or x.shape[1] != weight.numel() or bias.numel() != weight.numel():
        raise ValueError(
            f"channel_layer_norm normalises dim 1 of an (N, C, ...) input with (C,) weight and bias; got input "
            f"{tuple(x.shape)}, weight {tuple(weight.shape)}, bias {tuple(bias.shape)}: build the norm with the "
            f"channel count of the layer that feeds it (ChannelLayerNorm(normalized_shape=C))"
        )
    if capturing_graph():
        shape = _affine_shape(x)
        mean = x.mean(1, keepdim=True)
        rstd = torch.rsqrt((x - mean).square().mean(1, keepdim=True) + eps)
        return (x - mean) * rstd * weight.view(shape) + bias.view(shape)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad):
        return _ChannelLayerNormFunction.apply(x, weight, bias, eps)
    mean, rstd = _statistics(x, eps)
    return _normalize(x, weight, bias, mean, rstd)


class ChannelLayerNorm(_D2LayerNorm):
    """LayerNorm over the channels of NCHW tensors: a drop-in for detectron2's ``LayerNorm`` (``norm="LN"``).

    Same parameters (``weight``, ``bias`` of shape (C,); state-dict keys unchanged), same ``eps`` default (1e-6),
    same maths, and a subclass of detectron2's class (so ``isinstance`` checks, e.g. the optimizer's norm
    groups, treat it alike). Under autograd it keeps only its input and two per-position statistics for the
    backward pass instead of three full-size intermediates. Use it as a ``norm`` value of detectron2's FPN,
    SimpleFeaturePyramid and conv heads: ``model.backbone.norm = ChannelLayerNorm``.

    Args:
        normalized_shape (int): number of channels C.
        eps (float): added to the variance.
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-6):
        if not isinstance(normalized_shape, int) or isinstance(normalized_shape, bool) or normalized_shape < 1:
            raise ValueError(
                f"ChannelLayerNorm(normalized_shape) takes the number of channels as a positive int, got "
                f"{normalized_shape!r}"
            )
        super().__init__(normalized_shape, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape[0]}, eps={self.eps}"
