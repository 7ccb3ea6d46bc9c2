"""Result types shared by every backend (floor 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor

__all__ = ["OpSelection", "ActionSelection", "ActionSelectionV2", "GetActionResult", "Hidden"]

Hidden = tuple[Tensor, Tensor]  # (h, c), each [L, B, H]


class OpSelection(NamedTuple):
    """What one :func:`esper_fast.select_op` call returns; every field is ``[N]``.

    Attributes:
        op: int64 chosen action per row (-1 on a bad row when ``validate=False``).
        log_prob: float32 ``log pi(op | s)`` over the valid entries (max-subtracted log-softmax).
        entropy: float32 Shannon entropy (nats) of pi over the valid entries.
        q_op: float32 ``q[n, op]``: the critic's value for the chosen op.
        value: float32 ``sum_a pi(a | s) q[n, a]``: the policy-weighted (op-independent) value.
    """

    op: Tensor
    log_prob: Tensor
    entropy: Tensor
    q_op: Tensor
    value: Tensor


class ActionSelection(NamedTuple):
    """What :func:`esper_fast.ops.select_actions` returns for ``[N]`` rows; dicts are keyed op first,
    then :data:`esper_fast.rules.AFTER_OP` order."""

    actions: dict[str, Tensor]  # head -> [N] int64 (-1 on a bad row)
    log_probs: dict[str, Tensor]  # head -> [N] float32
    entropies: dict[str, Tensor]  # head -> [N] float32, nats over the valid entries
    q_op: Tensor  # [N] Q(s, chosen op)
    expected_value: Tensor  # [N] sum_a pi(a|s) Q(s, a)


class ActionSelectionV2(NamedTuple):
    """What the schema-v2 fused selection returns for ``[N]`` rows; dicts keyed op first, then
    :data:`esper_fast.rules.AFTER_OP` order."""

    actions: dict[str, Tensor]  # head -> [N] int64 (-1 on a bad row)
    log_probs: dict[str, Tensor]  # head -> [N] float32 log-prob under the floored distribution
    entropies: dict[str, Tensor]  # head -> [N] float32 entropy / log(#valid) (0 with one valid)
    q_op: Tensor  # [N] Q(s, chosen op) from the q_head values given
    expected_value: Tensor  # [N] sum_a pi(a|s) Q(s, a) (pi floored)
    values: Tensor  # [N] the V(s) given, or expected_value when none was given


@dataclass(frozen=True, slots=True)
class GetActionResult:
    """esper's ``GetActionResult`` plus three optional extras (appended, defaults None).

    Attributes:
        actions: head -> ``[B]`` int64. log_probs: head -> ``[B]`` float32 (non-differentiable).
        values: ``[B]`` - Q(s, actions["op"]) in ``value_mode="q_op"``, sum_a pi(a|s) Q(s, a) in
            ``"expected"``. hidden: ``(h, c)`` each ``[L, B, H]``. sampled_op: ``[B]`` the op the value was read at
            (esper's double draw: another op; the fused policies: actions["op"] checked against q_op).
        op_logits: ``[B, num_ops]`` masked (-1e4) op logits when ``return_op_logits``.
        head_entropies: head -> ``[B]`` entropy over the valid entries (free from the kernel): in nats from
            :class:`esper_fast.FactoredPolicy`; normalised by log(#valid) (esper HEAD's unit, 0 with one
            valid action) from :class:`esper_fast.FactoredPolicyV2`, whose ``values`` are V(s).
        q_op: ``[B]`` Q(s, chosen op). expected_value: ``[B]`` sum_a pi(a|s) Q(s, a).
    """

    actions: dict[str, Tensor]
    log_probs: dict[str, Tensor]
    values: Tensor
    hidden: Hidden
    sampled_op: Tensor
    op_logits: Tensor | None = None
    head_entropies: dict[str, Tensor] | None = None
    q_op: Tensor | None = None
    expected_value: Tensor | None = None
