"""Moved: :func:`make_tiny` lives in :mod:`hieradet.testing` (also exported as ``hieradet.engine.make_tiny``)."""

from hieradet.testing import make_tiny

__all__ = ["make_tiny"]
