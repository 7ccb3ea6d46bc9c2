"""esper_fast: fused, sync-free action selection for esper's factored recurrent actor-critic."""

from esper_fast.constants import HEAD_NAMES, LifecycleOp, GerminationStyle  # noqa: F401
from esper_fast.errors import InvalidActionMaskError, InvalidStateMachineError  # noqa: F401
