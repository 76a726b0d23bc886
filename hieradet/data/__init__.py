"""Synthetic datasets (COCO and LVIS v1 json) and their detectron2 registration."""

from .register import register_synthetic_dataset
from .synthetic import CATEGORY_NAMES, annotation_files, generate_synthetic_dataset

__all__ = ["CATEGORY_NAMES", "annotation_files", "generate_synthetic_dataset", "register_synthetic_dataset"]
