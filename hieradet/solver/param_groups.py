"""Parameter groups with layer-wise learning-rate decay and weight-decay exemptions.

Two sets of rules, chosen by the configs:

- HieraDet (Bolya et al. 2024, Tab. 16; the defaults): no weight decay on normalisation layers (every
  ``torch.nn`` norm and detectron2's channels-first ``LayerNorm`` of the FPN / heads), biases, the abs-win
  position embeddings ``window_embed`` / ``global_embed`` and the relpos tables ``rel_pos_h`` / ``rel_pos_w``.
- ViTDet (Li et al. 2022), exactly as detectron2's ``get_default_optimizer_params`` applies it:
  ``norm_types="torch"`` (only ``torch.nn`` norms are norms; detectron2's ``LayerNorm`` is decayed),
  ``weight_decay_bias=None`` (biases decayed), ``no_weight_decay_keys=("window_embed", "global_embed")``
  (ViTDet's ``pos_embed`` exemption, for B and L) and, for ViT-H, ``weight_decay_norm=None`` and no keys.

Layer-wise lr decay uses :func:`hieradet.solver.lr_decay.layer_decay_rate` (the same layer ids as
detectron2's ``get_vit_lr_decay_rate`` for a ViT).
"""

from typing import Any, Dict, List, Optional, Sequence

from detectron2.layers.batch_norm import LayerNorm as D2LayerNorm
from detectron2.solver.build import reduce_param_groups
from torch import nn

from .loop import warn_outside_loop
from .lr_decay import layer_decay_rate

__all__ = [
    "NO_WEIGHT_DECAY_KEYS",
    "NORM_TYPES",
    "TORCH_NORM_TYPES",
    "VITDET_NO_WEIGHT_DECAY_KEYS",
    "find_num_blocks",
    "get_optimizer_params",
]

NO_WEIGHT_DECAY_KEYS = ("window_embed", "global_embed", "rel_pos_h", "rel_pos_w")
# our tiled embedding takes the place of ViTDet's ``pos_embed`` (exempt from weight decay in ViTDet-B/L)
VITDET_NO_WEIGHT_DECAY_KEYS = ("window_embed", "global_embed")

# the norm types detectron2's get_default_optimizer_params recognises
TORCH_NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
NORM_TYPES = TORCH_NORM_TYPES + (D2LayerNorm,)
_NORM_TYPES = {"all": NORM_TYPES, "torch": TORCH_NORM_TYPES}


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
    weight_decay_norm: Optional[float] = 0.0,
    weight_decay_bias: Optional[float] = 0.0,
    norm_types: str = "all",
    no_weight_decay_keys: Sequence[str] = NO_WEIGHT_DECAY_KEYS,
    lr_decay_rate: float = 1.0,
    num_blocks: Optional[int] = None,
    overrides: Optional[Dict[str, Dict[str, float]]] = None,
    loop_settings: Optional[Dict[str, Any]] = None,
) -> List[Dict[str, Any]]:
    """Parameter groups for a ``torch.optim`` optimizer.

    Args:
        model (nn.Module): the detector; parameter names are taken from ``model.named_modules()``.
        base_lr (float): learning rate the layer-decay factors multiply (required when
            ``lr_decay_rate != 1``); configs set it to ``"${..lr}"``.
        weight_decay (float): default weight decay (``None``: the optimizer's).
        weight_decay_norm (float or None): weight decay of normalisation layers; ``None`` treats them
            like weights (ViTDet-H).
        weight_decay_bias (float or None): weight decay of parameters named ``bias``; ``None`` treats
            biases like weights (detectron2's and ViTDet's behaviour).
        norm_types (str): which modules are norms: ``"all"`` (``torch.nn`` norms and detectron2's
            channels-first ``LayerNorm``) or ``"torch"`` (``torch.nn`` norms only, as detectron2 and ViTDet).
        no_weight_decay_keys (tuple[str]): local parameter names that get no weight decay.
        lr_decay_rate (float): layer-wise lr decay; 1.0 disables it.
        num_blocks (int or None): backbone depth for the decay; ``None`` reads the backbone's ``num_blocks``.
        overrides (dict): ``{local_param_name: {"lr": ..., "weight_decay": ...}}`` applied last.
        loop_settings (dict or None): the config's settings that only ``hieradet.engine.do_train`` applies
            (``total_batch_size``, ``loader_batch_size``, ``seed``; the configs interpolate them from ``train`` and
            ``dataloader.train``); when given and this is built outside ``do_train``, one
            :class:`hieradet.solver.loop.OutsideLoopWarning` names what that loop does not apply
            (:func:`hieradet.solver.loop.warn_outside_loop`).
    """
    if loop_settings is not None:
        warn_outside_loop(model=model, **dict(loop_settings))
    if lr_decay_rate <= 0 or lr_decay_rate > 1:
        raise ValueError(f"lr_decay_rate must be in (0, 1], got {lr_decay_rate}")
    if lr_decay_rate != 1.0:
        if base_lr is None:
            raise ValueError("layer-wise lr decay (lr_decay_rate != 1) needs base_lr")
        if num_blocks is None:
            num_blocks = find_num_blocks(model)
    if norm_types not in _NORM_TYPES:
        raise ValueError(f"norm_types must be one of {list(_NORM_TYPES)}, got {norm_types!r}")
    norms = _NORM_TYPES[norm_types]
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
            if weight_decay_norm is not None and isinstance(module, norms):
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
