"""Result types shared by every backend (floor 1)."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["OpSelection"]


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
