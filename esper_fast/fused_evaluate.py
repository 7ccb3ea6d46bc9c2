"""The PPO update's network path, fused: ``evaluate_actions`` in the inference head layout.

Same parameters (no new modules, same state_dict) and the same math as
:meth:`FactoredNetwork.heads` + :meth:`FactoredNetwork.score_actions`, but

* every head's first Linear, blueprint_head's first Linear and value_head's state part run as ONE
  stacked GEMM and the seven small heads' output Linears as ONE block-diagonal GEMM (the layout of
  :meth:`FactoredNetwork.action_heads`, the same :meth:`FactoredNetwork._fused_head_weights`), built
  differentiably from the live parameters on every call;
* the critic is evaluated only at the stored op, ``relu(W_s x + b + W_op[:, op])``: no
  ``[B, T, num_ops, H/2]`` intermediate;
* the heads leave as one packed ``[B, T, A]`` logits tensor into the fused, differentiable
  :func:`esper_fast.ops.score.score_actions_packed` (one launch forward, one backward).

:meth:`FactoredNetwork.evaluate_actions` routes here when ``fused_evaluate`` is True (the default for
:class:`esper_fast.FactoredPolicy`; :class:`esper_fast.ReferencePolicy` keeps esper's
per-head path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from esper_fast.constants import HEAD_NAMES
from esper_fast.ops.score import ScoreLayout, score_actions_packed
from esper_fast.types import Hidden

if TYPE_CHECKING:
    from esper_fast.network import FactoredNetwork

__all__ = ["evaluate_actions_fused", "packed_layout", "score_lstm_out", "train_heads"]


def packed_layout(net: FactoredNetwork) -> tuple[ScoreLayout, tuple[str, ...]]:
    """The packed column layout of :func:`train_heads` (small heads in registration order, then
    blueprint) and that column order."""
    from esper_fast.network import SMALL_HEADS

    order = (*SMALL_HEADS, "blueprint")
    cached = net.__dict__.get("_packed_layout")
    if cached is None or cached[1] != order:
        cached = (ScoreLayout.packed(net.head_sizes, order), order)
        net.__dict__["_packed_layout"] = cached
    return cached


def train_heads(net: FactoredNetwork, lstm_out: Tensor, op: Tensor) -> tuple[Tensor, Tensor]:
    """Packed logits ``[..., A]`` (layout :func:`packed_layout`) and Q(s, op) ``[...]`` for
    ``lstm_out [..., H]`` and the stored ``op [...]`` int64; differentiable."""
    from esper_fast.network import SMALL_HEADS

    w1, b1, w2, b2 = net._fused_head_weights()  # built from the live parameters: differentiable
    H, half = net.lstm_hidden_dim, net.lstm_hidden_dim // 2
    small = len(SMALL_HEADS) * half
    # split, not slicing: the backward is one cat, not a zero-filled z per slice
    z_small, z_bp, z_value = F.linear(lstm_out, w1, b1).split([small, H, half], dim=-1)
    small_logits = F.linear(torch.relu(z_small), w2, b2)
    bp = net.blueprint_head
    bp_logits = bp[4](torch.relu(bp[2](torch.relu(z_bp))))
    w_op = net.value_head[0].weight[:, H:]  # [half, num_ops]
    pre = z_value + F.embedding(op, w_op.t())  # W_s x + b + W_op[:, op]
    q_op = F.linear(torch.relu(pre), net.value_head[2].weight, net.value_head[2].bias).squeeze(-1)
    return torch.cat([small_logits, bp_logits], dim=-1), q_op


def evaluate_actions_fused(
    net: FactoredNetwork,
    states: Tensor,
    blueprint_indices: Tensor,
    actions: dict[str, Tensor],
    masks: dict[str, Tensor | None],
    hidden: Hidden | None,
) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor], Hidden]:
    """esper's ``evaluate_actions`` contract: ``(log_probs head -> [B, T], Q(s, stored op) [B, T],
    normalised entropy head -> [B, T], new hidden)`` for ``[B, T, ...]`` inputs."""
    lstm_out, new_hidden = net.trunk(states, blueprint_indices, hidden)
    indices = {"blueprint_indices": (blueprint_indices, None, net.num_blueprints)}
    log_probs, q_op, entropy = score_lstm_out(net, lstm_out, actions, masks, indices=indices)
    return log_probs, q_op, entropy, new_hidden


def score_lstm_out(
    net: FactoredNetwork,
    lstm_out: Tensor,
    actions: dict[str, Tensor],
    masks: dict[str, Tensor | None],
    indices: dict[str, tuple[Tensor, int | None, int]] | None = None,
) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]:
    """Heads + fused scoring for a trunk output ``lstm_out [B, T, H]``: ``(log_probs, Q(s, op), entropy)``.

    The update replays the trunk piece by piece (LSTM resets at episode starts) and calls this once
    over the whole ``[B, T]`` sequence: the heads have no recurrence. ``indices`` (name -> (tensor,
    low, high)) are range-checked with the masks under validation, as on the per-head path.
    """
    from esper_fast.network import validate_masks_and_logits

    op = actions["op"]
    if net.validate:  # validation below names an out-of-range op; until then keep the gather in range
        op = op.clamp(0, net.head_sizes["op"] - 1)
    packed, q_op = train_heads(net, lstm_out, op)
    layout, order = packed_layout(net)
    if net.validate:  # the same checks as the per-head path: masks, logits, stored-action and index ranges
        ranges = {f"actions[{h!r}]": (actions[h], 0, net.head_sizes[h]) for h in HEAD_NAMES}
        validate_masks_and_logits(layout.split(packed), masks, indices={**(indices or {}), **ranges})
    mask = None
    if any(masks.get(h) is not None for h in HEAD_NAMES):
        ones = lambda h: torch.ones(*packed.shape[:-1], net.head_sizes[h], dtype=torch.bool, device=packed.device)  # noqa: E731
        mask = torch.cat([masks[h] if masks.get(h) is not None else ones(h) for h in order], dim=-1)
    acts = torch.stack([actions[h] for h in HEAD_NAMES], dim=-1)
    backend = "torch" if getattr(net, "backend", "auto") == "torch" else "auto"
    lp, ent = score_actions_packed(packed, layout, acts, mask, None, backend=backend)
    return dict(zip(HEAD_NAMES, lp.unbind(0))), q_op, dict(zip(HEAD_NAMES, ent.unbind(0)))
