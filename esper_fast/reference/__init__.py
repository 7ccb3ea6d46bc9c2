"""Pure-PyTorch ground truth for every esper_fast kernel (floor 2).

* :func:`select_op_reference` - the semantics of :func:`esper_fast.select_op`.
* :class:`ReferencePolicy` - esper's actor-critic selection in torch ops (``legacy=True``: the bug).
* :func:`philox_uniform` - the counter-based RNG every backend shares.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from esper_fast.reference.philox import gumbel_from_uniform, philox_uniform
from esper_fast.reference.select import reference_gumbel, select_op_reference

if TYPE_CHECKING:
    from esper_fast.reference.policy import ReferencePolicy

__all__ = ["ReferencePolicy", "select_op_reference", "philox_uniform", "gumbel_from_uniform", "reference_gumbel"]


def __getattr__(name: str) -> Any:
    """``ReferencePolicy`` on first use: it builds on ``esper_fast.network``, which imports
    ``esper_fast.reference.actions``, so an eager import here would be circular."""
    if name == "ReferencePolicy":
        from esper_fast.reference.policy import ReferencePolicy

        return ReferencePolicy
    raise AttributeError(f"module 'esper_fast.reference' has no attribute {name!r}")
