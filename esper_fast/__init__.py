"""esper_fast: fused, sync-free action selection for esper's factored recurrent actor-critic.

The op is chosen exactly once per row, and the log-prob, entropy, Q(s, chosen op) and the
policy-weighted value sum_a pi(a|s) Q(s, a) come from the same kernel pass (:func:`select_op`).

The torch-based names are imported on first use (PEP 562), so ``import esper_fast`` (and
``esper-fast --help``) does not pay for importing torch. When gymnasium is installed, importing
the package registers ``esper_fast/SeedLifecycle-v0`` and ``esper_fast/ExactMDP-v0``
(:mod:`esper_fast.registration`, adapters in :mod:`esper_fast.envs.gym`).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from esper_fast.constants import HEAD_NAMES, GerminationStyle, LifecycleOp
from esper_fast.errors import BackendUnavailableError, InvalidActionMaskError, InvalidStateMachineError
from esper_fast.version import __version__ as __version__  # re-exported

if TYPE_CHECKING:  # the lazy names, for type checkers and IDEs
    from esper_fast.integrations.esper import patch_esper, unpatch_esper
    from esper_fast.ops import available_backends, select_op
    from esper_fast.policy import FactoredPolicy, GetActionResult
    from esper_fast.policy_v2 import FactoredPolicyV2
    from esper_fast.reference_policy import ReferencePolicy
    from esper_fast.types import OpSelection

__all__ = [
    "select_op",
    "patch_esper",
    "unpatch_esper",
    "FactoredPolicy",
    "FactoredPolicyV2",
    "ReferencePolicy",
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

_LAZY = {
    "select_op": "esper_fast.ops",
    "available_backends": "esper_fast.ops",
    "FactoredPolicy": "esper_fast.policy",
    "GetActionResult": "esper_fast.policy",
    "OpSelection": "esper_fast.types",
    "FactoredPolicyV2": "esper_fast.policy_v2",
    "ReferencePolicy": "esper_fast.reference_policy",
    "patch_esper": "esper_fast.integrations.esper",
    "unpatch_esper": "esper_fast.integrations.esper",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'esper_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def _register_gymnasium() -> None:
    """Register the Gymnasium ids when gymnasium is installed (it is an optional dependency)."""
    if importlib.util.find_spec("gymnasium") is None:
        return
    from esper_fast.registration import register_envs

    register_envs()


_register_gymnasium()
