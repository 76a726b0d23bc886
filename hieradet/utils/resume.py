"""Old home of the resumable sampler and hook, kept importable.

The sampler now lives in :mod:`hieradet.data.samplers`, the loader that makes resumed runs exact in
:mod:`hieradet.data.loader`, and the hook in :mod:`hieradet.engine.hooks`.
"""

from hieradet.data.samplers import ResumableTrainingSampler, find_sampler
from hieradet.engine.hooks import DeterministicResumeHook

__all__ = ["ResumableTrainingSampler", "DeterministicResumeHook", "find_sampler"]
