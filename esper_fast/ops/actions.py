"""Selection of a whole factored action: the op first (once), then the op-dependent heads.

``select_actions`` is what :class:`esper_fast.FactoredPolicy` calls on its hot path. It composes
:func:`esper_fast.select_op` head by head: one call for the op (which also yields Q(s, op) and
sum_a pi(a) Q(s, a)), esper's style rule keyed on THAT op, an optional op-conditioned slot mask, then
one call per remaining head. Nothing here syncs with the host.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from esper_fast.constants import STYLE_FREE_OPS, GerminationStyle
from esper_fast.ops.select import select_op

__all__ = ["ActionSelection", "select_actions", "op_dependent_masks"]

# Order in which heads are selected after the op (esper's get_action order).
AFTER_OP = ("style", "slot", "blueprint", "tempo", "alpha_target", "alpha_speed", "alpha_curve")


class ActionSelection(NamedTuple):
    """Per-head results for ``[N]`` rows; dicts are keyed op first, then ``AFTER_OP`` order."""

    actions: dict[str, Tensor]  # head -> [N] int64
    log_probs: dict[str, Tensor]  # head -> [N] float32
    entropies: dict[str, Tensor]  # head -> [N] float32, nats over the valid entries
    q_op: Tensor  # [N] Q(s, chosen op)
    expected_value: Tensor  # [N] sum_a pi(a|s) Q(s, a)


def op_dependent_masks(
    op: Tensor,
    style_mask: Tensor | None,
    slot_mask: Tensor | None,
    slot_by_op: Tensor | None,
    num_styles: int,
    num_slots: int,
) -> tuple[Tensor, Tensor | None]:
    """The style and slot masks once the op is known (no host sync).

    * style: rows whose op is not GERMINATE / SET_ALPHA_TARGET allow only SIGMOID_ADD (esper).
    * slot: ``slot_mask & slot_by_op[n, op[n]]`` when ``slot_by_op [N, num_ops, S]`` is given.
    """
    n = op.shape[0]
    if style_mask is None:
        style_mask = torch.ones(n, num_styles, dtype=torch.bool, device=op.device)
    free = ((op == STYLE_FREE_OPS[0]) | (op == STYLE_FREE_OPS[1])).unsqueeze(-1)
    forced = torch.arange(num_styles, device=op.device) == int(GerminationStyle.SIGMOID_ADD)
    style = torch.where(free, style_mask, forced)
    if slot_by_op is not None:
        by_op = slot_by_op.gather(1, op.clamp(min=0).view(n, 1, 1).expand(n, 1, num_slots)).squeeze(1)
        slot_mask = by_op if slot_mask is None else slot_mask & by_op
    return style, slot_mask


def select_actions(
    logits: dict[str, Tensor],
    masks: dict[str, Tensor | None],
    q: Tensor,
    *,
    deterministic: bool = False,
    noise: dict[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
    slot_by_op: Tensor | None = None,
    backend: str = "auto",
) -> ActionSelection:
    """Choose every head of a factored action, the op exactly once.

    Args:
        logits: head -> ``[N, n_head]`` raw logits (all of ``HEAD_NAMES``).
        masks: head -> ``[N, n_head]`` bool (True = valid) or None.
        q: ``[N, num_ops]`` critic values Q(s, a) for every op.
        deterministic: argmax every head instead of sampling.
        noise: optional head -> ``[N, n_head]`` Gumbel noise (exact tests); absent heads use Philox.
        generator: torch.Generator for the Philox keys.
        slot_by_op: optional ``[N, num_ops, num_slots]`` bool: slots valid for each op.
        backend: select_op backend.

    Validation is the caller's (one folded check); rows without a valid entry come back as -1.
    """
    noise = noise or {}
    kw = dict(deterministic=deterministic, generator=generator, backend=backend, validate=False)
    op_sel = select_op(logits["op"], q, masks.get("op"), noise=noise.get("op"), **kw)
    style_mask, slot_mask = op_dependent_masks(
        op_sel.op, masks.get("style"), masks.get("slot"), slot_by_op,
        logits["style"].shape[-1], logits["slot"].shape[-1],
    )  # fmt: skip
    effective = {**masks, "style": style_mask, "slot": slot_mask}
    actions, log_probs, entropies = {"op": op_sel.op}, {"op": op_sel.log_prob}, {"op": op_sel.entropy}
    for head in AFTER_OP:
        sel = select_op(logits[head], None, effective.get(head), noise=noise.get(head), **kw)
        actions[head], log_probs[head], entropies[head] = sel.op, sel.log_prob, sel.entropy
    return ActionSelection(actions, log_probs, entropies, op_sel.q_op, op_sel.value)
