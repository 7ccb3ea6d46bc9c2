"""Whole-action selection composed head by head (the ground truth of the fused kernel).

The op is chosen first (once) with the critic; then esper's op-dependent rules build the style mask
(SIGMOID_ADD forced unless GERMINATE / SET_ALPHA_TARGET) and, optionally, the slot mask
(``slot_by_op[n, op]``); then every other head in esper's get_action order. The rules and the
composition are :mod:`esper_fast.rules` (shared with the production paths); this module adds the
reference's per-head choice (:func:`select_op_reference`, Philox noise).
"""

from __future__ import annotations

from torch import Tensor

from esper_fast.constants import HEAD_NAMES
from esper_fast.reference.select import reference_gumbel, select_op_reference
from esper_fast.rules import compose_heads
from esper_fast.types import ActionSelection

__all__ = ["select_actions_reference"]


def select_actions_reference(
    logits: dict[str, Tensor],
    masks: dict[str, Tensor | None],
    q: Tensor,
    *,
    deterministic: bool,
    noise: dict[str, Tensor] | None = None,
    key: Tensor | None = None,
    slot_by_op: Tensor | None = None,
) -> ActionSelection:
    """The fused kernel's semantics in torch ops; without ``noise`` the Gumbel noise of head h comes
    from Philox(``key``) stream h + 1, exactly as every fused backend draws it."""
    noise = dict(noise or {})

    def select_fn(l, q_, m, g, head):
        if g is None and not deterministic:
            if key is None:
                raise ValueError("select_actions_reference: sampling needs `noise` or `key`")
            g = reference_gumbel(key, l.shape[0], l.shape[1], l.device, stream=HEAD_NAMES.index(head) + 1)
        return select_op_reference(l, q_, m, deterministic=deterministic, noise=g)

    return compose_heads(select_fn, logits, masks, q, noise, slot_by_op)
