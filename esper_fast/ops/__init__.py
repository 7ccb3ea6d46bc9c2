"""Kernels and their dispatch (floor 2)."""

from esper_fast.ops.backends import available_backends
from esper_fast.ops.select import draw_key, select_op

__all__ = ["select_op", "available_backends", "draw_key"]
