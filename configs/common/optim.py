"""AdamW with hieradet's parameter groups and layer-wise lr decay (``optimizer.params.lr_decay_rate``).

The defaults are HieraDet's rules (Bolya et al. 2024, Tab. 16): no weight decay on norms (also detectron2's
channels-first LayerNorm of the FPN / heads), biases, abs-win position embeddings and relpos tables. The fixed
ViTDet configs switch to ViTDet's own rules (``configs/COCO/mask_rcnn_vitdet_b_100ep.py``); see
``hieradet.solver.get_optimizer_params``.
"""

import torch
from detectron2.config import LazyCall as L

from hieradet.solver import get_optimizer_params

AdamW = L(torch.optim.AdamW)(
    params=L(get_optimizer_params)(
        # params.model is set to the built model by hieradet.engine.do_train
        base_lr="${..lr}",
        weight_decay_norm=0.0,
        weight_decay_bias=0.0,
        norm_types="all",
        lr_decay_rate=1.0,
    ),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=0.1,
)
