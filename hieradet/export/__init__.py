"""Deployment: export a detector's backbone to ONNX / ``torch.export`` with dynamic image size, run and check it."""

from .core import (
    DETECTOR_UNSUPPORTED,
    FORMATS,
    ExportError,
    FeatureGraph,
    build_model,
    check_exported,
    check_image,
    compare_outputs,
    config_max_size,
    export_features,
    export_model,
    load_exported,
    read_test_image,
    trace,
)

__all__ = [
    "DETECTOR_UNSUPPORTED",
    "FORMATS",
    "ExportError",
    "FeatureGraph",
    "build_model",
    "check_exported",
    "check_image",
    "compare_outputs",
    "export_features",
    "export_model",
    "load_exported",
    "read_test_image",
    "config_max_size",
    "trace",
]
