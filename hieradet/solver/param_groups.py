"""Parameter groups with layer-wise learning-rate decay and weight-decay exemptions.

Weight decay is switched off for normalisation layers (every ``torch.nn`` norm and detectron2's
channels-first ``LayerNorm`` used by the FPN / SimpleFeaturePyramid / heads), optionally for biases,
and for parameters whose local name is one of ``no_weight_decay_keys`` (by default the abs-win
position embeddings ``window_embed`` / ``global_embed`` and the relative position tables
``rel_pos_h`` / ``rel_pos_w``). Layer-wise lr decay uses :func:`hieradet.modeling.lr_decay.layer_decay_rate`.
"""

from typing import Any, Dict, List, Optional, Sequence

from detectron2.layers.batch_norm import LayerNorm as D2LayerNorm
from detectron2.solver.build import reduce_param_groups
from torch import nn

from ..modeling.lr_decay import layer_decay_rate

__all__ = ["NO_WEIGHT_DECAY_KEYS", "NORM_TYPES", "find_num_blocks", "get_optimizer_params"]

NO_WEIGHT_DECAY_KEYS = ("window_embed", "global_embed", "rel_pos_h", "rel_pos_w")

NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    D2LayerNorm,
)


def find_num_blocks(model: nn.Module) -> int:
    """Number of transformer blocks of the backbone inside ``model`` (its ``num_blocks`` attribute).

    Looks for the first sub-module under ``backbone`` that defines ``num_blocks`` (HieraDet under an
    FPN's ``bottom_up``, ViT under a SimpleFeaturePyramid's ``net``, or the backbone itself).
    """
    model = getattr(model, "module", model)  # DistributedDataParallel
    for name, module in model.named_modules():
        in_backbone = name == "backbone" or name.startswith("backbone.")
        if in_backbone and isinstance(getattr(module, "num_blocks", None), int):
            return module.num_blocks
    raise ValueError(
        "layer-wise lr decay needs the number of backbone blocks, but no module under `model.backbone` has an "
        "integer `num_blocks` attribute; pass num_blocks=... to get_optimizer_params or set lr_decay_rate=1.0"
    )


def get_optimizer_params(
    model: nn.Module,
    base_lr: Optional[float] = None,
    weight_decay: Optional[float] = None,
    weight_decay_norm: float = 0.0,
    weight_decay_bias: Optional[float] = 0.0,
    no_weight_decay_keys: Sequence[str] = NO_WEIGHT_DECAY_KEYS,
    lr_decay_rate: float = 1.0,
    num_blocks: Optional[int] = None,
    overrides: Optional[Dict[str, Dict[str, float]]] = None,
) -> List[Dict[str, Any]]:
    """Parameter groups for a ``torch.optim`` optimizer.

    Args:
        model (nn.Module): the detector; parameter names are taken from ``model.named_modules()``.
        base_lr (float): learning rate the layer-decay factors multiply (required when
            ``lr_decay_rate != 1``); configs set it to ``"${..lr}"``.
        weight_decay (float): default weight decay (``None``: the optimizer's).
        weight_decay_norm (float): weight decay of normalisation layers.
        weight_decay_bias (float or None): weight decay of parameters named ``bias``; ``None`` treats
            biases like weights (detectron2's and ViTDet's behaviour).
        no_weight_decay_keys (tuple[str]): local parameter names that get no weight decay.
        lr_decay_rate (float): layer-wise lr decay; 1.0 disables it.
        num_blocks (int or None): backbone depth for the decay; ``None`` reads the backbone's ``num_blocks``.
        overrides (dict): ``{local_param_name: {"lr": ..., "weight_decay": ...}}`` applied last.
    """
    if lr_decay_rate <= 0 or lr_decay_rate > 1:
        raise ValueError(f"lr_decay_rate must be in (0, 1], got {lr_decay_rate}")
    if lr_decay_rate != 1.0:
        if base_lr is None:
            raise ValueError("layer-wise lr decay (lr_decay_rate != 1) needs base_lr")
        if num_blocks is None:
            num_blocks = find_num_blocks(model)
    overrides = dict(overrides or {})
    defaults: Dict[str, float] = {}
    if base_lr is not None:
        defaults["lr"] = base_lr
    if weight_decay is not None:
        defaults["weight_decay"] = weight_decay

    params: List[Dict[str, Any]] = []
    seen = set()
    for module_name, module in model.named_modules():
        for local_name, value in module.named_parameters(recurse=False):
            if not value.requires_grad or value in seen:
                continue
            seen.add(value)
            hyper = dict(defaults)
            if isinstance(module, NORM_TYPES):
                hyper["weight_decay"] = weight_decay_norm
            if local_name == "bias" and weight_decay_bias is not None:
                hyper["weight_decay"] = weight_decay_bias
            if local_name in no_weight_decay_keys:
                hyper["weight_decay"] = 0.0
            if lr_decay_rate != 1.0:
                full_name = f"{module_name}.{local_name}" if module_name else local_name
                hyper["lr"] = base_lr * layer_decay_rate(full_name, lr_decay_rate, num_blocks)
            hyper.update(overrides.get(local_name, {}))
            params.append({"params": [value], **hyper})
    return reduce_param_groups(params)
