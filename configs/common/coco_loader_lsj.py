"""COCO data loaders with large-scale jitter (LSJ) at 1024 px, batch 64.

Training: random horizontal flip, resize by a random scale in [0.1, 2.0] of 1024x1024, then a
1024x1024 crop (boxes recomputed from the cropped masks); the model pads each batch to a 1024
square. Test: the longer side resized to 1024.

The training stream comes from ``hieradet.data.ResumableTrainingSampler`` instead of detectron2's
``TrainingSampler`` (the same per-epoch shuffles, sharded over ranks), and the batches from
``hieradet.data.build_resumable_train_loader`` (detectron2's loader arguments and aspect-ratio grouping;
augmentations seeded by stream position): with ``train.seed`` set, ``--resume`` repeats the uninterrupted run.
"""

import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from hieradet.data import ResumableTrainingSampler, build_resumable_train_loader
from hieradet.evaluation import COCOEvaluator

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
# box/mask AP by faster-coco-eval (same numbers as pycocotools); dataloader.evaluator.backend=pycocotools opts out
dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}")

image_size = 1024
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.mapper.recompute_boxes = True
dataloader.train.total_batch_size = 64
# seed None: drawn at random (as detectron2's TrainingSampler), or train.seed when that is set (do_train)
dataloader.train.sampler = L(ResumableTrainingSampler)(size="${..dataset}", shuffle=True, seed=None)
dataloader.train._target_ = build_resumable_train_loader
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size),
]
