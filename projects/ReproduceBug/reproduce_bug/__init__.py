"""A toy-scale reproduction of Bolya et al. 2024's interpolation bug, on generated scenes, using ``hieradet`` as a
library (its sparse MAE, HieraDet and position embeddings): scenes (:mod:`.scenes`), the fine-tuned classifier
(:mod:`.head`) and the runner (:mod:`.runner`). ``reproduce.py`` beside this package is its command line."""

from .head import HieraClassifier
from .runner import FULL, KINDS, QUICK, ToySettings, format_table, run_reproduction, settings_from
from .scenes import SHAPES, normalise, render_scenes, sample_scenes

__all__ = [
    "FULL",
    "HieraClassifier",
    "KINDS",
    "QUICK",
    "SHAPES",
    "ToySettings",
    "format_table",
    "normalise",
    "render_scenes",
    "run_reproduction",
    "sample_scenes",
    "settings_from",
]
