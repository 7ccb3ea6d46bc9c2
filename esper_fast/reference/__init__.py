"""Pure-PyTorch ground truth for every esper_fast kernel (floor 2).

* :func:`select_op_reference` - the semantics of :func:`esper_fast.select_op`.
* :class:`ReferencePolicy` - esper's actor-critic selection in torch ops (``legacy=True``: the bug).
* :func:`philox_uniform` - the counter-based RNG every backend shares.
"""

from esper_fast.reference.philox import gumbel_from_uniform, philox_uniform
from esper_fast.reference.policy import ReferencePolicy
from esper_fast.reference.select import reference_gumbel, select_op_reference

__all__ = ["ReferencePolicy", "select_op_reference", "philox_uniform", "gumbel_from_uniform", "reference_gumbel"]
