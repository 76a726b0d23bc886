"""Deployment: export a whole detector (boxes, scores, classes, masks) or its backbone to ONNX / ``torch.export``
with dynamic image size, run and check it."""

from .core import (
    FORMATS,
    ExportError,
    FeatureGraph,
    build_model,
    check_exported,
    check_image,
    compare_detections,
    compare_outputs,
    config_max_size,
    describe_detection_diffs,
    export_features,
    export_graph,
    export_model,
    load_exported,
    read_test_image,
    trace,
)
from .detector import DetectorGraph, check_detector_supported
from .evaluation import ExportedDetector, ap_differences, evaluate_exported, require_test_set

__all__ = [
    "FORMATS",
    "DetectorGraph",
    "ExportError",
    "ExportedDetector",
    "FeatureGraph",
    "ap_differences",
    "build_model",
    "check_detector_supported",
    "check_exported",
    "check_image",
    "compare_detections",
    "compare_outputs",
    "config_max_size",
    "describe_detection_diffs",
    "evaluate_exported",
    "export_features",
    "export_graph",
    "export_model",
    "load_exported",
    "read_test_image",
    "require_test_set",
    "trace",
]
