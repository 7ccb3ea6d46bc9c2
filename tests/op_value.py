"""Observable op/value checks: the value a policy returns is Q(s, op) at the op it returned.

``GetActionResult.sampled_op`` of the fused policies is ``policy.value_read_op``: the returned op where the
kernel's ``q_op`` equals the kernel's input ``q`` there (else -1). These helpers go further: they recompute
Q(s, a) for every op from the network's own ``q_values`` (a fresh ``forward``, plain torch, independent of
the kernel that chose the op and read ``q_op``) and compare the returned ``q_op`` / ``values`` with
Q(s, returned op); a value read at any other op fails.
"""

from __future__ import annotations

import torch
from torch import Tensor

from esper_fast.types import GetActionResult, Hidden


def q_of_returned_op(
    policy, state: Tensor, blueprint_indices: Tensor, res: GetActionResult, hidden: Hidden | None = None
) -> Tensor:
    """``[B]`` Q(s, res.actions["op"]) from ``policy.forward``'s ``q_values`` for ``state [B, D]``."""
    with torch.no_grad():
        q = policy.forward(state[:, None], blueprint_indices[:, None], hidden)["q_values"][:, 0]
    return q.gather(-1, res.actions["op"].clamp(min=0)[:, None]).squeeze(-1)


def assert_value_read_at_returned_op(
    policy,
    state: Tensor,
    blueprint_indices: Tensor,
    res: GetActionResult,
    hidden: Hidden | None = None,
    atol: float = 1e-5,
) -> None:
    """``res.q_op`` (and ``res.values`` in ``value_mode="q_op"``) equal Q(s, returned op), recomputed."""
    expected = q_of_returned_op(policy, state, blueprint_indices, res, hidden)
    torch.testing.assert_close(res.q_op, expected, atol=atol, rtol=1e-5)
    if getattr(policy, "value_mode", "q_op") == "q_op":
        torch.testing.assert_close(res.values, expected, atol=atol, rtol=1e-5)


def assert_stored_q_is_q_of_stored_op(trainer, atol: float = 1e-5) -> None:
    """After ``trainer.rollout()`` (policy unchanged since): the buffer's ``old_q`` (the rollout's
    ``q_op``) equals Q(s, stored op) replayed by :func:`evaluate_sequences` (esper's evaluate_actions)."""
    from esper_fast.ppo.update import evaluate_sequences

    with torch.no_grad():
        _, q_stored, _ = evaluate_sequences(trainer.policy, trainer.buffer)
    torch.testing.assert_close(trainer.buffer.old_q, q_stored, atol=atol, rtol=1e-5)
