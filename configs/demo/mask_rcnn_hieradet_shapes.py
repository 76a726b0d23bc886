"""Demo: a HieraDet Mask R-CNN trained from scratch on the generated shapes dataset, sized for 2 CPU cores.

The project's HieraDet + FPN Mask R-CNN (``configs/common/models/mask_rcnn_hieradet.py``: windows 8-4-14-7,
global blocks with relpos, recursive abs-win position embeddings) with a Hiera-T trunk (widths 96-192-384-768,
1-2-7-2 blocks) and detectron2's default ``mask_rcnn_fpn`` heads at full width (256-channel FPN, here with
LayerNorm, 1-conv RPN head, 2-fc box head; the mask head has 2 convs instead of 4) instead of ViTDet's heavier
4conv1fc LayerNorm heads, on 256 px images, trained with SGD. An earlier demo with 64-channel heads was faster per
iteration but learned little (box AP 2 after 150 iterations).
``tools/demo_train.py`` generates and registers the data (``synthetic_demo_{train,val}``), trains and evaluates
with :mod:`hieradet.engine`::

    python tools/demo_train.py --output-dir output/demo
"""

import torch
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import transforms as T
from detectron2.evaluation import COCOEvaluator
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

from hieradet.modeling import hieradet_kwargs
from hieradet.solver import get_optimizer_params

from ..common.models.mask_rcnn_hieradet import model
from ..common.train import train

IMAGE_SIZE = 256
ROIS_PER_IMAGE = 128  # sampled ROIs per image (detectron2: 512); at most 25% positives reach the mask head
NUM_CLASSES = 3  # tools/demo_train.py generates the first 3 shapes: circle, square, triangle
TRAIN_NAME, VAL_NAME = "synthetic_demo_train", "synthetic_demo_val"

# ---- backbone: Hiera-T (embed 96, 1 head, 1-2-7-2 blocks, global blocks 5, 7, 9), no drop path
bottom_up = model.backbone.bottom_up
bottom_up.update(hieradet_kwargs("T"))
bottom_up.img_size = IMAGE_SIZE
bottom_up.drop_path_rate = 0.0
model.backbone.norm = "LN"  # LayerNorm in the FPN: without it, training from scratch diverged (NaN) at lr 0.02
model.backbone.square_pad = 0  # all images are 256x256 already

# ---- heads: detectron2's default mask_rcnn_fpn heads (undo ViTDet's 2-conv RPN, 4conv1fc box head and LN)
model.proposal_generator.head.conv_dims = [-1]
model.roi_heads.num_classes = NUM_CLASSES
model.roi_heads.batch_size_per_image = ROIS_PER_IMAGE
model.roi_heads.box_head.conv_dims = []
model.roi_heads.box_head.fc_dims = [1024, 1024]
model.roi_heads.box_head.conv_norm = ""
model.roi_heads.mask_head.conv_norm = ""
# CPU cost: the mask head runs on every positive ROI and dominated the iteration time once the RPN found the
# objects (4 convs -> 2 here); at test time, few proposals and detections (images have at most 4 objects)
model.roi_heads.mask_head.conv_dims = [256, 256]
model.proposal_generator.post_nms_topk = (1000, 200)
model.roi_heads.box_predictor.test_topk_per_image = 20

# ---- data: the generated 256x256 images, flips only
dataloader = dict(
    train=L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names=TRAIN_NAME),
        mapper=L(DatasetMapper)(
            is_train=True,
            augmentations=[L(T.RandomFlip)(horizontal=True), L(T.RandomFlip)(horizontal=False, vertical=True)],
            image_format="RGB",
            use_instance_mask=True,
            recompute_boxes=False,
        ),
        total_batch_size=4,
        num_workers=1,
    ),
    test=L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names=VAL_NAME, filter_empty=False),
        mapper=L(DatasetMapper)(is_train=False, augmentations=[], image_format="RGB"),
        num_workers=1,
    ),
    evaluator=L(COCOEvaluator)(dataset_name=VAL_NAME, tasks=("bbox", "segm"), output_dir=None),
)

# ---- schedule: SGD with momentum from scratch, linear warm-up then cosine. (AdamW at lr 1e-3 diverged here:
# the classification loss rose above its initial value within 20 iterations; so did SGD at 0.02 without FPN norm.)
optimizer = L(torch.optim.SGD)(
    params=L(get_optimizer_params)(base_lr="${..lr}", weight_decay_norm=0.0, weight_decay_bias=0.0),
    lr=0.01,
    momentum=0.9,
    weight_decay=1e-4,
)
train.max_iter = 84
train.device = "cpu"
train.amp.enabled = False
train.ddp.fp16_compression = False
train.eval_period = train.max_iter  # evaluate once, at the end
train.log_period = 10
train.checkpointer = dict(period=100000, max_to_keep=1)
train.output_dir = "output/demo/train"
train.seed = 0
# a ParamScheduler: detectron2's LRScheduler hook stretches it over train.max_iter
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.02),
    warmup_length=0.15,
    warmup_factor=0.01,
)
