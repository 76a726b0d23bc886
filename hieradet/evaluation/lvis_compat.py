"""Makes ``lvis==0.5.3`` (the official LVIS API, last released 2020) work on NumPy >= 1.24.

``lvis/eval.py`` calls ``np.float`` in ``LVISEval.accumulate``; NumPy 1.24 removed that alias, so every LVIS
evaluation crashes with ``AttributeError: module 'numpy' has no attribute 'float'``. Rather than editing the
installed package (users install ``lvis`` themselves) or putting the alias back on NumPy for everybody,
:func:`patch_lvis_numpy` gives only the ``lvis.eval`` module a NumPy view that also has the removed aliases
(``float``, ``int``, ``bool``, ``object`` -> the builtins they always meant). Everything else is NumPy itself.

It is applied when :mod:`hieradet.evaluation` is imported (if ``lvis`` is installed) and by
:class:`hieradet.evaluation.LVISEvaluator`; calling it again is a no-op.
"""

import builtins
import types

import numpy as np

__all__ = ["patch_lvis_numpy", "lvis_needs_patch"]

_REMOVED_ALIASES = ("float", "int", "bool", "object", "complex", "str")


class _NumpyWithAliases(types.ModuleType):
    """``numpy`` plus the scalar aliases NumPy 1.24 removed; attribute reads fall through to numpy."""

    def __init__(self):
        super().__init__("numpy", np.__doc__)
        for name in _REMOVED_ALIASES:
            setattr(self, name, getattr(builtins, name))

    def __getattr__(self, name):  # only called for names not set in __init__
        return getattr(np, name)


def lvis_needs_patch() -> bool:
    """Whether this NumPy lacks ``np.float`` (the alias ``lvis.eval`` uses)."""
    return not hasattr(np, "float")


def patch_lvis_numpy() -> bool:
    """Gives ``lvis.eval`` the NumPy aliases it needs. Returns True if ``lvis.eval`` is (now) patched, False
    when nothing had to be done (NumPy < 1.24). Raises ImportError with install advice if lvis is missing."""
    try:
        import lvis.eval as lvis_eval
    except ImportError as e:
        raise ImportError(
            "LVIS evaluation needs the `lvis` package, hieradet's `lvis` extra: pip install --no-deps lvis==0.5.3 "
            "(what tools/install.sh does; pip install 'hieradet[lvis]' also pulls lvis's opencv-python)"
        ) from e
    if isinstance(lvis_eval.np, _NumpyWithAliases):
        return True
    if not lvis_needs_patch():
        return False
    lvis_eval.np = _NumpyWithAliases()
    return True
