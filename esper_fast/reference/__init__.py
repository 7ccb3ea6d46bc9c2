"""Pure-PyTorch ground truth for every esper_fast kernel (floor 2).

* :func:`select_op_reference` - the semantics of :func:`esper_fast.select_op`.
* :func:`esper_fast.reference.actions.select_actions_reference` - the fused ``select_actions``.
* :func:`philox_uniform` - the counter-based RNG every backend shares.

esper's rules the reference composes are :mod:`esper_fast.rules` (floor 1); esper's whole policy in
torch ops, :class:`esper_fast.ReferencePolicy`, is a network and lives on the policy floor
(:mod:`esper_fast.reference_policy`).
"""

from __future__ import annotations

from esper_fast.reference.philox import gumbel_from_uniform, philox_uniform
from esper_fast.reference.select import reference_gumbel, select_op_reference

__all__ = ["select_op_reference", "philox_uniform", "gumbel_from_uniform", "reference_gumbel"]
