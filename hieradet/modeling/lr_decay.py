"""Moved to :mod:`hieradet.solver.lr_decay`; this import path keeps working."""

from ..solver.lr_decay import layer_decay_rate, layer_id

__all__ = ["layer_id", "layer_decay_rate"]
