"""Gradient-norm clipping for any ``torch.optim.Optimizer`` built by a LazyConfig, and the configs' optimizers
that clip in their own ``step()`` (so that any detectron2 training loop gets the recipe's clipping)."""

import math
import types
from typing import Optional

import torch
from detectron2.utils.events import get_event_storage

__all__ = ["AdamW", "SGD", "clip_gradient_norm"]


def clip_gradient_norm(optimizer: torch.optim.Optimizer, max_norm: float, norm_type: float = 2.0):
    """Makes ``optimizer.step()`` first clip the total gradient norm of all its parameters to ``max_norm``
    (``torch.nn.utils.clip_grad_norm_`` over every parameter group together, as detectron2's yacs
    ``SOLVER.CLIP_GRADIENTS`` with ``CLIP_TYPE: "full_model"`` does).

    The optimizer is changed in place and returned; its ``state_dict`` is unchanged, so checkpoints and resume
    work as before. Under AMP (detectron2's ``AMPTrainer`` calls ``GradScaler.step(optimizer)``), the norm is
    measured on the true gradients: ``GradScaler.step`` unscales the gradients before it calls ``step``, and for
    an optimizer that unscales inside its own step (``fused=True``), which receives the gradients still scaled
    and the scale as ``optimizer.grad_scale``, the threshold is scaled by the same factor. The norm before
    clipping (unscaled) is kept in ``optimizer.last_grad_norm`` and, inside a detectron2 trainer, logged as
    ``grad_norm``.

    Args:
        optimizer: the optimizer to wrap.
        max_norm (float): the largest total norm allowed; must be positive and finite.
        norm_type (float): the norm's order (2 = Euclidean; ``inf`` = largest absolute value).
    """
    if isinstance(max_norm, bool) or not (isinstance(max_norm, (int, float)) and 0 < max_norm < math.inf):
        raise ValueError(f"gradient clipping needs a positive, finite max_norm, got {max_norm!r}")
    if getattr(optimizer, "_hieradet_clip", None) is not None:
        raise ValueError(f"this optimizer already clips gradients at {optimizer._hieradet_clip}")
    step = optimizer.step

    def clipped_step(self, *args, **kwargs):  # a method, as torch's lr schedulers expect of `step`
        grads = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        # set by GradScaler.step for optimizers that unscale in their own step: the gradients are still scaled
        scale = getattr(self, "grad_scale", None)
        scale = 1.0 if scale is None else float(scale)
        norm = torch.nn.utils.clip_grad_norm_(grads, max_norm * scale, norm_type)
        self.last_grad_norm = float(norm) / scale
        try:  # inside a detectron2 trainer: log it beside the losses
            storage = get_event_storage()
        except AssertionError:  # no EventStorage is open (a plain training loop)
            storage = None
        if storage is not None:
            storage.put_scalar("grad_norm", self.last_grad_norm, smoothing_hint=True)
        return step(*args, **kwargs)

    optimizer.step = types.MethodType(clipped_step, optimizer)
    optimizer._hieradet_clip = float(max_norm)
    optimizer.last_grad_norm = None
    return optimizer


def _clip_if_set(optimizer: torch.optim.Optimizer, clip_grad_norm: Optional[float]) -> None:
    if clip_grad_norm is None or (not isinstance(clip_grad_norm, bool) and clip_grad_norm == 0):
        return  # off
    clip_gradient_norm(optimizer, clip_grad_norm)


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` that clips the total gradient norm in its ``step()`` when ``clip_grad_norm`` is set
    (:func:`clip_gradient_norm`); the configs' optimizer, so that detectron2's own training loops clip as
    hieradet's does. Its ``state_dict`` is a plain AdamW's (checkpoints load either way).

    Args:
        params: parameters or parameter groups.
        clip_grad_norm (float or None): largest total gradient norm; ``None`` or 0: no clipping. The configs
            set it to ``"${oc.select:train.clip_grad_norm,null}"``, so ``train.clip_grad_norm=...`` sets it.
        **kwargs: ``torch.optim.AdamW``'s arguments (``lr``, ``betas``, ``weight_decay``, ...).
    """

    def __init__(self, params, clip_grad_norm: Optional[float] = None, **kwargs):
        super().__init__(params, **kwargs)
        _clip_if_set(self, clip_grad_norm)


class SGD(torch.optim.SGD):
    """``torch.optim.SGD`` that clips the total gradient norm in its ``step()`` when ``clip_grad_norm`` is set;
    see :class:`AdamW`.

    Args:
        params: parameters or parameter groups.
        clip_grad_norm (float or None): largest total gradient norm; ``None`` or 0: no clipping.
        **kwargs: ``torch.optim.SGD``'s arguments (``lr``, ``momentum``, ``weight_decay``, ...).
    """

    def __init__(self, params, clip_grad_norm: Optional[float] = None, **kwargs):
        super().__init__(params, **kwargs)
        _clip_if_set(self, clip_grad_norm)
