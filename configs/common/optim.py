"""AdamW with hieradet's parameter groups: no weight decay on norms, biases, abs-win position
embeddings and relpos tables; layer-wise lr decay via ``optimizer.params.lr_decay_rate``."""

import torch
from detectron2.config import LazyCall as L

from hieradet.solver import get_optimizer_params

AdamW = L(torch.optim.AdamW)(
    params=L(get_optimizer_params)(
        # params.model is set to the built model by hieradet.engine.do_train
        base_lr="${..lr}",
        weight_decay_norm=0.0,
        weight_decay_bias=0.0,
        lr_decay_rate=1.0,
    ),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=0.1,
)
