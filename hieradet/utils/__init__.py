"""Old import paths, kept working: the input guards and the box-only switch now live in :mod:`hieradet.engine`
(``engine.guards``, ``engine.box_only``), the tiny test configs in :mod:`hieradet.testing`.

Nothing here is imported by ``hieradet`` itself; import the submodules you need.
"""

from .box_only import auto_box_only, dataset_has_masks, set_box_only
from .guards import check_finite_inputs, check_square_size, install_input_guard, with_input_guard
from .resume import DeterministicResumeHook, ResumableTrainingSampler

__all__ = [
    "DeterministicResumeHook",
    "ResumableTrainingSampler",
    "auto_box_only",
    "check_finite_inputs",
    "check_square_size",
    "dataset_has_masks",
    "install_input_guard",
    "set_box_only",
    "with_input_guard",
]
