"""Mask R-CNN, fixed ViTDet-B (abs win), COCO, 100 epochs (box 52.2 / mask 46.2 in Bolya et al. 2024 Tab. 10).

ViTDet's recipe unchanged except the position embedding: the pretrained 14x14 embedding is tiled per window
instead of interpolated, and relpos is kept on the global blocks only. The optimizer groups are ViTDet's,
parameter by parameter (detectron2's ``get_default_optimizer_params`` as ViTDet calls it): only ``torch.nn``
norms get no weight decay (detectron2's channels-first LayerNorm in the feature pyramid and heads is decayed),
biases and the relpos tables are decayed, ViTDet's ``pos_embed`` exemption covers the tiled embedding.
"""

from hieradet.solver import COCO_TRAIN_IMAGES, VITDET_NO_WEIGHT_DECAY_KEYS, epoch_schedule

from ..common.coco_loader_lsj import dataloader
from ..common.models.mask_rcnn_vitdet import model
from ..common.optim import AdamW as optimizer
from ..common.train import train

# ViTDet-B: lr 1e-4, drop path 0.1, layer decay 0.7, global blocks 2, 5, 8, 11, window 14
model.backbone.net.drop_path_rate = 0.1
optimizer.lr = 1e-4
optimizer.params.lr_decay_rate = 0.7
# ViTDet's groups: weight_decay_norm=0.0 for torch.nn norms only, biases decayed
optimizer.params.norm_types = "torch"
optimizer.params.weight_decay_bias = None
# Our embedding differs by design: the tiled window_embed takes ViTDet's pos_embed rule (lr layer 0, no decay).
optimizer.params.no_weight_decay_keys = VITDET_NO_WEIGHT_DECAY_KEYS

# 100 epochs of COCO train2017 (~118k images) at 64 images per batch: 100 * 118000 / 64 = 184375 iterations;
# step decay (x0.1) at 8/9 and 26/27 of them (iterations 163889 and 177546), 250 warmup iterations.
lr_multiplier = epoch_schedule(train, dataloader, epochs=100, images_per_epoch=COCO_TRAIN_IMAGES)
train.eval_period = 5000
train.paper_target = "box 52.2 / mask 46.2 (Bolya et al. 2024, Tab. 10)"
