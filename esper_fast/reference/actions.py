"""Whole-action selection composed head by head (the ground truth of the fused kernel).

The op is chosen first (once) with the critic; then esper's op-dependent rules build the style mask
(SIGMOID_ADD forced unless GERMINATE / SET_ALPHA_TARGET) and, optionally, the slot mask
(``slot_by_op[n, op]``); then every other head in esper's get_action order.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from esper_fast.constants import HEAD_NAMES, STYLE_FREE_OPS, GerminationStyle
from esper_fast.reference.select import reference_gumbel, select_op_reference
from esper_fast.types import OpSelection

__all__ = ["ActionSelection", "AFTER_OP", "compose_heads", "normalized_entropy", "op_dependent_masks",
           "select_actions_reference", "style_override_mask"]

# Order in which heads are chosen after the op (esper's get_action order).
AFTER_OP = ("style", "slot", "blueprint", "tempo", "alpha_target", "alpha_speed", "alpha_curve")

# select_fn(logits [N, n], q [N, n] | None, mask | None, noise | None, head) -> OpSelection
SelectFn = Callable[[Tensor, "Tensor | None", "Tensor | None", "Tensor | None", str], OpSelection]


class ActionSelection(NamedTuple):
    """Per-head results for ``[N]`` rows; dicts are keyed op first, then ``AFTER_OP`` order."""

    actions: dict[str, Tensor]  # head -> [N] int64 (-1 on a bad row)
    log_probs: dict[str, Tensor]  # head -> [N] float32
    entropies: dict[str, Tensor]  # head -> [N] float32, nats over the valid entries
    q_op: Tensor  # [N] Q(s, chosen op)
    expected_value: Tensor  # [N] sum_a pi(a|s) Q(s, a)


def style_override_mask(style_mask: Tensor, op: Tensor) -> Tensor:
    """esper's causal rule: rows whose op is not GERMINATE/SET_ALPHA_TARGET allow only SIGMOID_ADD.

    ``style_mask`` ``[..., num_styles]`` bool, ``op`` ``[...]`` int64 -> the new mask (no sync).
    """
    free = ((op == STYLE_FREE_OPS[0]) | (op == STYLE_FREE_OPS[1])).unsqueeze(-1)
    forced = torch.arange(style_mask.shape[-1], device=op.device) == int(GerminationStyle.SIGMOID_ADD)
    return torch.where(free, style_mask, forced)


def op_dependent_masks(
    op: Tensor, style_mask: Tensor | None, slot_mask: Tensor | None, slot_by_op: Tensor | None,
    num_styles: int, num_slots: int,
) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """The style and slot masks once the op is known (no host sync).

    * style: rows whose op is not GERMINATE / SET_ALPHA_TARGET allow only SIGMOID_ADD (esper).
    * slot: ``slot_mask & slot_by_op[n, op[n]]`` when ``slot_by_op [N, num_ops, S]`` is given.
    """
    n = op.shape[0]
    if style_mask is None:
        style_mask = torch.ones(n, num_styles, dtype=torch.bool, device=op.device)
    style = style_override_mask(style_mask, op)
    if slot_by_op is not None:
        by_op = slot_by_op.gather(1, op.clamp(min=0).view(n, 1, 1).expand(n, 1, num_slots)).squeeze(1)
        slot_mask = by_op if slot_mask is None else slot_mask & by_op
    return style, slot_mask


def compose_heads(
    select_fn: SelectFn,
    logits: dict[str, Tensor],
    masks: dict[str, Tensor | None],
    q: Tensor,
    noise: dict[str, Tensor] | None = None,
    slot_by_op: Tensor | None = None,
) -> ActionSelection:
    """Op first (with the critic), op-dependent masks, then the other heads, via ``select_fn``."""
    noise = noise or {}
    op_sel = select_fn(logits["op"], q, masks.get("op"), noise.get("op"), "op")
    style_mask, slot_mask = op_dependent_masks(
        op_sel.op, masks.get("style"), masks.get("slot"), slot_by_op,
        logits["style"].shape[-1], logits["slot"].shape[-1],
    )  # fmt: skip
    effective = {**masks, "style": style_mask, "slot": slot_mask}
    actions, log_probs, entropies = {"op": op_sel.op}, {"op": op_sel.log_prob}, {"op": op_sel.entropy}
    for head in AFTER_OP:
        sel = select_fn(logits[head], None, effective.get(head), noise.get(head), head)
        actions[head], log_probs[head], entropies[head] = sel.op, sel.log_prob, sel.entropy
    return ActionSelection(actions, log_probs, entropies, op_sel.q_op, op_sel.value)


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


def normalized_entropy(logits: Tensor, mask: Tensor) -> Tensor:
    """esper's ``MaskedCategorical.entropy()``: entropy / log(#valid), exactly 0 with one valid.

    ``logits`` are already masked (-1e4); ``mask`` bool of the same shape. Returns ``logits.shape[:-1]``.
    """
    logp = torch.log_softmax(logits, dim=-1)
    raw = -(logp.exp() * logp * mask).sum(-1)
    n_valid = mask.sum(-1).clamp(min=1)
    divisor = torch.where(n_valid > 1, torch.log(n_valid.to(raw.dtype)), torch.ones_like(raw))
    return torch.where(n_valid == 1, torch.zeros_like(raw), raw / divisor.clamp(min=1e-8))

