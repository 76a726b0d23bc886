"""AdamW with hieradet's parameter groups and layer-wise lr decay (``optimizer.params.lr_decay_rate``).

The defaults are HieraDet's rules (Bolya et al. 2024, Tab. 16): no weight decay on norms (also detectron2's
channels-first LayerNorm of the FPN / heads), biases, abs-win position embeddings and relpos tables. The fixed
ViTDet configs switch to ViTDet's own rules (``configs/COCO/mask_rcnn_vitdet_b_100ep.py``); see
``hieradet.solver.get_optimizer_params``.

The optimizer is ``hieradet.solver.AdamW`` (a ``torch.optim.AdamW`` with a plain AdamW state dict) so that
``train.clip_grad_norm`` travels with it: any detectron2 training loop that calls ``instantiate(cfg.optimizer)``
clips the total gradient norm in ``step()``, also under AMP. ``params.loop_settings`` makes a build outside
``hieradet.engine.do_train`` warn once about the settings only that loop applies (``hieradet.solver.loop``).
"""

from detectron2.config import LazyCall as L

from hieradet.solver import AdamW as _AdamW
from hieradet.solver import get_optimizer_params

# the settings of the whole config that only hieradet.engine.do_train applies (null where the config lacks them)
LOOP_SETTINGS = dict(
    total_batch_size="${oc.select:train.total_batch_size,null}",
    loader_batch_size="${oc.select:dataloader.train.total_batch_size,null}",
    seed="${oc.select:train.seed,null}",
)

AdamW = L(_AdamW)(
    params=L(get_optimizer_params)(
        # params.model is set to the built model by hieradet.engine.do_train
        base_lr="${..lr}",
        weight_decay_norm=0.0,
        weight_decay_bias=0.0,
        norm_types="all",
        lr_decay_rate=1.0,
        loop_settings=LOOP_SETTINGS,
    ),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=0.1,
    clip_grad_norm="${oc.select:train.clip_grad_norm,null}",  # train.clip_grad_norm=1.0: clip at 1 (off: null / 0)
)
