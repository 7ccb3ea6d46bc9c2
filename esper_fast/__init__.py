"""esper_fast: fused, sync-free action selection for esper's factored recurrent actor-critic.

The op is chosen exactly once per row, and the log-prob, entropy, Q(s, chosen op) and the
policy-weighted value sum_a pi(a|s) Q(s, a) come from the same kernel pass (:func:`select_op`).
"""

from esper_fast.constants import HEAD_NAMES, GerminationStyle, LifecycleOp
from esper_fast.errors import BackendUnavailableError, InvalidActionMaskError, InvalidStateMachineError
from esper_fast.ops import available_backends, select_op
from esper_fast.policy import FactoredPolicy, GetActionResult
from esper_fast.policy_v2 import FactoredPolicyV2
from esper_fast.types import OpSelection

__version__ = "0.1.0"

__all__ = [
    "select_op",
    "FactoredPolicy",
    "FactoredPolicyV2",
    "GetActionResult",
    "available_backends",
    "OpSelection",
    "InvalidActionMaskError",
    "InvalidStateMachineError",
    "BackendUnavailableError",
    "HEAD_NAMES",
    "LifecycleOp",
    "GerminationStyle",
]
