"""Ground truth of the schema-v2 fused selection (esper HEAD's get_action), in plain torch ops.

Per row, in esper HEAD's order (``FactoredRecurrentActorCritic.get_action`` at 2016337e):

1. the op, chosen once from its (floored) distribution, with ``Q(s, op)`` and
   ``sum_a pi(a|s) Q(s, a)`` read in the same pass;
2. every other head (style, slot, blueprint, tempo, alpha_target, alpha_speed, alpha_curve) on its
   *effective* mask: a head the op makes irrelevant allows only its canonical action
   (:data:`esper_fast.constants_v2.CANONICAL_ACTION`, whatever the caller's mask says); the slot mask
   is ``slot_by_op[n, op]`` when given (it replaces the slot mask, as HEAD's ``slot_by_op_mask``), and
   WAIT takes the first valid slot of it (slot 0 if none);
3. each head's probability floor (:func:`apply_probability_floor`), then argmax or Gumbel-max
   sampling, the log-prob and the entropy normalised by log(#valid) (0 with one valid action:
   HEAD's unit) of the floored distribution, all in FP32.

A row whose op is bad (no valid op, non-finite valid op logit) gets -1 / NaN for EVERY head; a head
whose effective mask is empty or has a non-finite valid logit gets -1 / NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from esper_fast.constants import HEAD_NAMES, LifecycleOp
from esper_fast.constants_v2 import CANONICAL_ACTION
from esper_fast.reference.select import reference_gumbel, select_op_reference
from esper_fast.rules import AFTER_OP, slot_for_op
from esper_fast.types import ActionSelectionV2

__all__ = [
    "ActionSelectionV2",
    "apply_probability_floor",
    "effective_mask",
    "normalize_entropy",
    "select_actions_v2_reference",
]


def apply_probability_floor(logits: Tensor, valid: Tensor, floor: float) -> Tensor:
    """esper HEAD's floor-preserving renormalisation, FP32; returns floored logits (-inf where invalid).

    With ``p = softmax(logits over valid)``, ``f = min(floor, 0.99 / #valid)``: entries with ``p < f``
    get ``f``, the others ``p * (1 - k f) / sum(p >= f)`` (k = #entries below f; both factors clamped
    at 1e-8), then ``log(max(p', 1e-8))``. One pass, not iterated (as HEAD). ``valid`` [N, A] bool.
    """
    lf = logits.float()
    p = torch.softmax(lf.masked_fill(~valid, float("-inf")), dim=-1)
    n_valid = valid.sum(-1, keepdim=True).float().clamp(min=1)
    eff = torch.minimum(torch.tensor(float(floor), dtype=torch.float32, device=lf.device), (1.0 / n_valid) * 0.99)
    under = valid & (p < eff)
    over = valid & (p >= eff)
    remaining = (1.0 - under.sum(-1, keepdim=True).float() * eff).clamp(min=1e-8)
    over_total = torch.where(over, p, torch.zeros_like(p)).sum(-1, keepdim=True).clamp(min=1e-8)
    floored = torch.where(under, eff.expand_as(p), torch.where(over, p * (remaining / over_total), p))
    out = torch.where(valid, torch.log(floored.clamp(min=1e-8)), torch.full_like(p, float("-inf")))
    # a non-finite valid logit keeps the row bad (NaN), as without a floor
    return torch.where(valid & ~torch.isfinite(lf), torch.full_like(out, float("nan")), out)


def normalize_entropy(entropy: Tensor, valid: Tensor) -> Tensor:
    """Entropy in nats -> entropy / log(#valid); exactly 0 with one valid entry; NaN stays NaN."""
    n = valid.sum(-1)
    out = entropy / torch.log(n.clamp(min=2).float())
    return torch.where((n == 1) & ~torch.isnan(entropy), torch.zeros_like(out), out)


def effective_mask(
    head: str, op: Tensor, mask: Tensor | None, n_actions: int, slot_by_op: Tensor | None = None
) -> Tensor:
    """The mask head ``head`` is chosen on once ``op [N]`` is known (no host sync); see module doc.

    Rows with ``op < 0`` (bad op) get an all-False mask (so the head is reported bad).
    """
    n = op.shape[0]
    cols = torch.arange(n_actions, device=op.device)
    if mask is None:
        mask = torch.ones(n, n_actions, dtype=torch.bool, device=op.device)
    if head == "slot":
        if slot_by_op is not None:
            mask = slot_for_op(slot_by_op, op)
        first = mask.int().argmax(-1, keepdim=True)  # first valid slot, 0 when none
        out = torch.where((op == int(LifecycleOp.WAIT)).unsqueeze(-1), cols == first, mask)
    else:
        canonical, relevant_ops = CANONICAL_ACTION[head]
        relevant = torch.zeros_like(op, dtype=torch.bool)
        for o in relevant_ops:
            relevant |= op == o
        out = torch.where(relevant.unsqueeze(-1), mask, (cols == canonical).expand(n, n_actions))
    return out & (op >= 0).unsqueeze(-1)


def _select_head(
    logits: Tensor, q: Tensor | None, valid: Tensor, floor: float, deterministic: bool, noise: Tensor | None
):
    scored = apply_probability_floor(logits, valid, floor) if floor > 0 else logits.float()
    sel = select_op_reference(scored, q, valid, deterministic=deterministic, noise=noise)
    return sel, normalize_entropy(sel.entropy, valid)


def select_actions_v2_reference(
    logits: dict[str, Tensor],
    masks: dict[str, Tensor | None],
    q: Tensor,
    value: Tensor | None = None,
    *,
    floors: dict[str, float] | None = None,
    deterministic: bool,
    noise: dict[str, Tensor] | None = None,
    key: Tensor | None = None,
    slot_by_op: Tensor | None = None,
) -> ActionSelectionV2:
    """The schema-v2 fused kernel's semantics (module doc). Without ``noise`` the Gumbel noise of head h
    comes from Philox(``key``) stream h + 1, exactly as every fused backend draws it.

    Args: ``logits`` head -> [N, n_h]; ``masks`` head -> [N, n_h] bool or None; ``q`` [N, num_ops]
    (q_head); ``value`` [N] V(s) or None; ``floors`` head -> probability floor (absent / 0: none);
    ``slot_by_op`` [N, num_ops, num_slots] bool or None.
    """
    noise, floors = dict(noise or {}), dict(floors or {})
    n = logits["op"].shape[0]

    def gumbel_for(head: str) -> Tensor | None:
        if deterministic or noise.get(head) is not None:
            return noise.get(head)
        if key is None:
            raise ValueError("select_actions_v2_reference: sampling needs `noise` or `key`")
        k = logits[head].shape[1]
        return reference_gumbel(key, n, k, logits[head].device, stream=HEAD_NAMES.index(head) + 1)

    op_mask = masks.get("op")
    op_valid = torch.ones_like(logits["op"], dtype=torch.bool) if op_mask is None else op_mask
    op_sel, op_ent = _select_head(logits["op"], q, op_valid, floors.get("op", 0.0), deterministic, gumbel_for("op"))
    op = op_sel.op
    actions, log_probs, entropies = {"op": op}, {"op": op_sel.log_prob}, {"op": op_ent}
    for head in AFTER_OP:
        valid = effective_mask(head, op, masks.get(head), logits[head].shape[1], slot_by_op)
        sel, ent = _select_head(logits[head], None, valid, floors.get(head, 0.0), deterministic, gumbel_for(head))
        actions[head], log_probs[head], entropies[head] = sel.op, sel.log_prob, ent
    values = op_sel.value if value is None else torch.where(op >= 0, value.float(), float("nan"))
    return ActionSelectionV2(actions, log_probs, entropies, op_sel.q_op, op_sel.value, values)
