"""Synthetic datasets (COCO and LVIS v1 json) and their detectron2 registration; the resumable train sampler and
loader."""

from .loader import ResumableTrainLoader, build_resumable_train_loader
from .register import register_json_dataset, register_synthetic_dataset
from .samplers import ResumableTrainingSampler, find_sampler
from .synthetic import CATEGORY_NAMES, annotation_files, generate_synthetic_dataset

__all__ = [
    "CATEGORY_NAMES",
    "ResumableTrainLoader",
    "ResumableTrainingSampler",
    "annotation_files",
    "build_resumable_train_loader",
    "find_sampler",
    "generate_synthetic_dataset",
    "register_json_dataset",
    "register_synthetic_dataset",
]
