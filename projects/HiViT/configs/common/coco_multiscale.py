"""COCO data as in the HiViT paper's detection recipe (App. A): multi-scale training, single-scale testing.

Training: random horizontal flip and the shorter side resized to one of 480, 512, ..., 800 (longer side at most
1333); 16 images per batch (8 GPUs x 2, MMDetection's default). Test: shorter side 800, longer at most 1333.
The HiViT authors' 3x config additionally uses DETR-style random crops, which are not reproduced here.
"""

import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from hieradet.evaluation import COCOEvaluator

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
# box/mask AP by faster-coco-eval (same numbers as pycocotools); dataloader.evaluator.backend=pycocotools opts out
dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}")

dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeShortestEdge)(short_edge_length=tuple(range(480, 801, 32)), max_size=1333, sample_style="choice"),
]
dataloader.train.mapper.image_format = "RGB"  # the test mapper follows the train mapper's format
dataloader.train.total_batch_size = 16
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333),
]
