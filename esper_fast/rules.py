"""esper's op-dependent rules, written once (floor 1: imports only constants and types).

The reference (:mod:`esper_fast.reference`), the kernels' Python side (:mod:`esper_fast.ops`), the
networks, the envs and the losses all read these rules from here; the C++ / CUDA / Triton kernels
implement the same rules and are tested against the reference that uses them.

* :data:`AFTER_OP` - the heads chosen after the op, in esper's ``get_action`` order.
* :func:`style_override_mask` - the style head allows only SIGMOID_ADD unless the op is GERMINATE or
  SET_ALPHA_TARGET (:data:`esper_fast.constants.STYLE_FREE_OPS`).
* :func:`slot_for_op` - the slot-for-op gather ``slot_by_op[..., op, :]``, with ONE out-of-range rule.
* :func:`op_dependent_masks` - the style and slot masks once the op is known.
* :func:`compose_heads` - op first (with the critic), then the op-dependent masks, then the others.
* :func:`causal_masks` - which heads are causally relevant after each op (the loss's masks).
* :func:`normalized_entropy` - esper's entropy unit (entropy / log #valid).

Nothing here syncs with the host.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from esper_fast.constants import CAUSAL_HEAD_OPS, STYLE_FREE_OPS, GerminationStyle
from esper_fast.types import ActionSelection, OpSelection

__all__ = [
    "AFTER_OP",
    "SelectFn",
    "causal_masks",
    "compose_heads",
    "normalized_entropy",
    "op_dependent_masks",
    "slot_for_op",
    "style_override_mask",
]

# Order in which heads are chosen after the op (esper's get_action order).
AFTER_OP: tuple[str, ...] = ("style", "slot", "blueprint", "tempo", "alpha_target", "alpha_speed", "alpha_curve")

# select_fn(logits [N, n], q [N, n] | None, mask | None, noise | None, head) -> OpSelection
SelectFn = Callable[[Tensor, "Tensor | None", "Tensor | None", "Tensor | None", str], OpSelection]


def style_override_mask(style_mask: Tensor, op: Tensor) -> Tensor:
    """esper's causal rule: rows whose op is not GERMINATE/SET_ALPHA_TARGET allow only SIGMOID_ADD.

    ``style_mask`` ``[..., num_styles]`` bool, ``op`` ``[...]`` int64 -> the new mask (no sync). An op
    outside the free ops (a bad row's -1 included) forces SIGMOID_ADD.
    """
    free = torch.zeros_like(op, dtype=torch.bool)
    for o in STYLE_FREE_OPS:
        free |= op == o
    forced = torch.arange(style_mask.shape[-1], device=op.device) == int(GerminationStyle.SIGMOID_ADD)
    return torch.where(free.unsqueeze(-1), style_mask, forced)


def slot_for_op(slot_by_op: Tensor, op: Tensor) -> Tensor:
    """The slots valid for each row's op: ``slot_by_op[..., op[...], :]`` (no host sync).

    ``slot_by_op`` ``[..., num_ops, S]`` bool, ``op`` ``[...]`` int64 -> ``[..., S]`` bool.

    Out-of-range rule (the one every path uses): an op outside ``[0, num_ops)`` - a bad row's -1, or a
    stored action out of range - restricts nothing: its row is all True. The op itself is then what
    makes the row bad (the op head reports it), never an index error or a slot read from another op.
    Every backend follows it: the C++ / CUDA select row (``csrc/select_actions.h``, ``op >= 0``), the C++
    score row (``csrc/score_row.h``, ``0 <= op < num_ops``), the Triton select and score kernels (a
    masked load with ``other=1``). Until this rule was written once, the torch reference and the Triton
    select kernel read the op-0 row for a bad row's -1 while the C++ kernels restricted nothing
    (``tests/test_rules.py`` compares them on such rows).
    """
    num_ops, num_slots = slot_by_op.shape[-2], slot_by_op.shape[-1]
    in_range = (op >= 0) & (op < num_ops)
    index = op.clamp(0, num_ops - 1)[..., None, None].expand(*op.shape, 1, num_slots)
    rows = slot_by_op.gather(-2, index).squeeze(-2)
    return rows | ~in_range.unsqueeze(-1)


def op_dependent_masks(
    op: Tensor,
    style_mask: Tensor | None,
    slot_mask: Tensor | None,
    slot_by_op: Tensor | None,
    num_styles: int,
    num_slots: int,
) -> tuple[Tensor, Tensor | None]:
    """The style and slot masks once ``op [N]`` is known (no host sync).

    * style: :func:`style_override_mask` (``None`` = all styles valid before the override).
    * slot: ``slot_mask & slot_for_op(slot_by_op, op)`` when ``slot_by_op [N, num_ops, S]`` is given
      (:func:`slot_for_op`'s out-of-range rule), else ``slot_mask`` unchanged (may be None).
    """
    n = op.shape[0]
    if style_mask is None:
        style_mask = torch.ones(n, num_styles, dtype=torch.bool, device=op.device)
    style = style_override_mask(style_mask, op)
    if slot_by_op is not None:
        by_op = slot_for_op(slot_by_op, op)
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
    """Op first (with the critic), op-dependent masks, then the other heads, via ``select_fn``.

    ``logits`` / ``masks`` / ``noise``: head -> ``[N, n_head]``; ``q`` ``[N, num_ops]``.
    """
    noise = noise or {}
    op_sel = select_fn(logits["op"], q, masks.get("op"), noise.get("op"), "op")
    style_mask, slot_mask = op_dependent_masks(
        op_sel.op,
        masks.get("style"),
        masks.get("slot"),
        slot_by_op,
        logits["style"].shape[-1],
        logits["slot"].shape[-1],
    )
    effective = {**masks, "style": style_mask, "slot": slot_mask}
    actions, log_probs, entropies = {"op": op_sel.op}, {"op": op_sel.log_prob}, {"op": op_sel.entropy}
    for head in AFTER_OP:
        sel = select_fn(logits[head], None, effective.get(head), noise.get(head), head)
        actions[head], log_probs[head], entropies[head] = sel.op, sel.log_prob, sel.entropy
    return ActionSelection(actions, log_probs, entropies, op_sel.q_op, op_sel.value)


def causal_masks(op: Tensor) -> dict[str, Tensor]:
    """esper's ``compute_causal_masks``: head -> bool tensor shaped like ``op`` (is the head relevant
    after that op; :data:`esper_fast.constants.CAUSAL_HEAD_OPS`)."""
    out = {}
    for head, ops in CAUSAL_HEAD_OPS.items():
        if ops is None:
            out[head] = torch.ones_like(op, dtype=torch.bool)
        else:
            rel = torch.zeros_like(op, dtype=torch.bool)
            for o in ops:
                rel |= op == o
            out[head] = rel
    return out


def normalized_entropy(logits: Tensor, mask: Tensor) -> Tensor:
    """esper's ``MaskedCategorical.entropy()``: entropy / log(#valid), exactly 0 with one valid.

    ``logits`` are already masked (-1e4); ``mask`` bool of the same shape. Returns ``logits.shape[:-1]``.
    """
    logp = torch.log_softmax(logits, dim=-1)
    raw = -(logp.exp() * logp * mask).sum(-1)
    n_valid = mask.sum(-1).clamp(min=1)
    divisor = torch.where(n_valid > 1, torch.log(n_valid.to(raw.dtype)), torch.ones_like(raw))
    return torch.where(n_valid == 1, torch.zeros_like(raw), raw / divisor.clamp(min=1e-8))
