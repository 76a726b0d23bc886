"""Gradient-norm clipping for any ``torch.optim.Optimizer`` built by a LazyConfig."""

import math
import types

import torch
from detectron2.utils.events import get_event_storage

__all__ = ["clip_gradient_norm"]


def clip_gradient_norm(optimizer: torch.optim.Optimizer, max_norm: float, norm_type: float = 2.0):
    """Makes ``optimizer.step()`` first clip the total gradient norm of all its parameters to ``max_norm``
    (``torch.nn.utils.clip_grad_norm_`` over every parameter group together, as detectron2's yacs
    ``SOLVER.CLIP_GRADIENTS`` with ``CLIP_TYPE: "full_model"`` does).

    The optimizer is changed in place and returned; its ``state_dict`` is unchanged, so checkpoints and resume
    work as before. Under AMP, ``GradScaler.step`` unscales the gradients before it calls ``step``, so the norm is
    measured on the true gradients. The norm before clipping is kept in ``optimizer.last_grad_norm`` and, inside a
    detectron2 trainer, logged as ``grad_norm``.

    Args:
        optimizer: the optimizer to wrap.
        max_norm (float): the largest total norm allowed; must be positive and finite.
        norm_type (float): the norm's order (2 = Euclidean; ``inf`` = largest absolute value).
    """
    if not (isinstance(max_norm, (int, float)) and 0 < max_norm < math.inf):
        raise ValueError(f"gradient clipping needs a positive, finite max_norm, got {max_norm!r}")
    if getattr(optimizer, "_hieradet_clip", None) is not None:
        raise ValueError(f"this optimizer already clips gradients at {optimizer._hieradet_clip}")
    step = optimizer.step

    def clipped_step(self, *args, **kwargs):  # a method, as torch's lr schedulers expect of `step`
        grads = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        self.last_grad_norm = float(torch.nn.utils.clip_grad_norm_(grads, max_norm, norm_type))
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
