"""Moved: the input guards live in :mod:`hieradet.engine.guards`; this path (used by configs and the README,
e.g. ``hieradet.utils.guards.with_input_guard``) keeps working."""

from hieradet.engine.guards import (
    check_finite_inputs,
    check_square_size,
    install_finite_input_guard,
    install_input_guard,
    with_input_guard,
)

__all__ = [
    "check_finite_inputs",
    "check_square_size",
    "install_finite_input_guard",
    "install_input_guard",
    "with_input_guard",
]
