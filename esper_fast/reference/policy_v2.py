"""esper HEAD's get_action composed head by head in plain torch ops (the unfused baseline).

The algorithm of esper-lite HEAD's ``FactoredRecurrentActorCritic.get_action`` (2016337e; our own code
from the facts): under ``inference_mode``, the trunk, every head's logits, V(s); the op from its FP32
masked (-1e4), floored distribution (``multinomial`` or argmax); then style, slot, blueprint, tempo,
alpha_target, alpha_speed, alpha_curve, each on its op-canonicalised mask, floored, sampled with its
own ``multinomial`` call (one launch chain per head, as HEAD). Used by the tests as a kernel-free
oracle (deterministic mode must agree exactly) and by ``bench_get_action`` as the plain-torch side.
"""

from __future__ import annotations

import torch
from torch import Tensor

from esper_fast.constants import HEAD_NAMES, MASKED_LOGIT_VALUE
from esper_fast.reference.actions_v2 import apply_probability_floor, effective_mask
from esper_fast.rules import AFTER_OP
from esper_fast.types import GetActionResult, Hidden

__all__ = ["reference_get_action_v2"]


def _head(logits: Tensor, valid: Tensor, floor: float, deterministic: bool, generator) -> tuple[Tensor, Tensor, Tensor]:
    masked = logits.float().masked_fill(~valid, MASKED_LOGIT_VALUE)
    if floor > 0:
        masked = apply_probability_floor(masked, valid, floor).masked_fill(~valid, MASKED_LOGIT_VALUE)
    logp = torch.log_softmax(masked, dim=-1)
    if deterministic:
        action = masked.argmax(dim=-1)
    else:
        action = torch.multinomial(torch.softmax(masked, dim=-1), 1, generator=generator).squeeze(-1)
    raw = -(logp.exp() * logp * valid).sum(-1)
    n = valid.sum(-1).clamp(min=1)
    ent = torch.where(
        n == 1, torch.zeros_like(raw), raw / torch.where(n > 1, torch.log(n.float()), torch.ones_like(raw))
    )
    return action, logp.gather(-1, action.unsqueeze(-1)).squeeze(-1), ent


def reference_get_action_v2(
    net,
    state: Tensor,
    blueprint_indices: Tensor,
    hidden: Hidden | None = None,
    masks: dict[str, Tensor | None] | None = None,
    slot_by_op_mask: Tensor | None = None,
    deterministic: bool = False,
    probability_floor: dict[str, float] | None = None,
    generator: torch.Generator | None = None,
) -> GetActionResult:
    """HEAD's get_action on ``net`` (a :class:`esper_fast.network_v2.NetworkV2Mixin`): ``state [B, D]``,
    ``blueprint_indices [B, S]``, ``masks`` head -> ``[B, n]`` bool or None. Returns ``GetActionResult``
    with ``values`` = V(s), normalised ``head_entropies`` and ``q_op`` = Q(s, op)."""
    masks = dict(masks or {})
    floors = probability_floor or {}
    with torch.inference_mode():
        lstm_out, new_hidden = net.trunk(state.unsqueeze(1), blueprint_indices.unsqueeze(1), hidden)
        x = lstm_out[:, 0]
        logits = net.head_logits(x)
        value = net._compute_state_value(x)
        op_mask = masks.get("op")
        op_valid = torch.ones_like(logits["op"], dtype=torch.bool) if op_mask is None else op_mask
        op, op_lp, op_ent = _head(logits["op"], op_valid, float(floors.get("op") or 0), deterministic, generator)
        actions, log_probs, entropies = {"op": op}, {"op": op_lp}, {"op": op_ent}
        for head in AFTER_OP:
            valid = effective_mask(head, op, masks.get(head), logits[head].shape[-1], slot_by_op_mask)
            a, lp, ent = _head(logits[head], valid, float(floors.get(head) or 0), deterministic, generator)
            actions[head], log_probs[head], entropies[head] = a, lp, ent
        q_op = net._compute_q(x, op)
    return GetActionResult(
        actions=actions,
        log_probs=log_probs,
        values=value,
        hidden=new_hidden,
        sampled_op=op,
        head_entropies={h: entropies[h] for h in HEAD_NAMES},
        q_op=q_op,
    )
