"""``ReferencePolicy``: esper's action selection in plain torch ops, with the legacy bug on request.

A :class:`~esper_fast.network.FactoredNetwork`, so it lives on the policy floor (floor 3, beside
:mod:`esper_fast.policy`), not in :mod:`esper_fast.reference` (floor 2), which nothing here builds on
but the shared rules (:mod:`esper_fast.rules`). Public as ``esper_fast.ReferencePolicy``.

Same network and parameter layout as :class:`esper_fast.FactoredPolicy` (both subclass
:class:`esper_fast.network.FactoredNetwork`), selection as esper wrote it: -1e4 masking,
``torch.multinomial(softmax(.))`` sampling, ``log_softmax(.).gather``.

* ``legacy=False`` - esper at 0872525b (after the fix): ``forward`` samples the op once; stochastic
  ``get_action`` reuses that sample and its value, deterministic recomputes Q(s, argmax op).
* ``legacy=True`` - esper at 97d9ba3f (the bug): ``get_action`` draws the op a SECOND time (or argmaxes
  it) for the stored action, but returns the value and ``sampled_op`` of ``forward``'s own draw. Only
  the double draw is reproduced; the network is 0872525b's (blueprint embedding wired in).

``noise`` (head -> ``[B, n]`` Gumbel noise) replaces multinomial by ``argmax(masked + noise)`` so
tests can compare with the fused kernel exactly. One corner differs by design: esper masks the style
logits with the env mask in ``forward`` and again with the override, so a row whose env style mask
excludes SIGMOID_ADD while the op forces it ends with every style at -1e4 (esper's env never builds
such a mask); FactoredPolicy forces SIGMOID_ADD there. In legacy mode ``noise["op_forward"]`` drives
forward's draw and ``noise["op"]`` the second one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from esper_fast.constants import HEAD_NAMES, MASKED_LOGIT_VALUE, POLICY_VALUE_MODES
from esper_fast.network import FactoredNetwork, mask_dict, validate_masks_and_logits
from esper_fast.rules import AFTER_OP, op_dependent_masks
from esper_fast.types import GetActionResult

__all__ = ["ReferencePolicy"]


def _draw(masked: Tensor, deterministic: bool, noise: Tensor | None, generator: torch.Generator | None) -> Tensor:
    """``[N, n]`` masked logits -> ``[N]`` int64 action (esper: argmax or multinomial of softmax)."""
    if deterministic:
        return masked.argmax(-1)
    if noise is not None:
        return (masked.float() + noise.float()).argmax(-1)
    return torch.multinomial(torch.softmax(masked, -1), 1, generator=generator).squeeze(-1)


def _entropy_nats(masked: Tensor) -> Tensor:
    logp = torch.log_softmax(masked, -1)
    return -(logp.exp() * logp).sum(-1)


class ReferencePolicy(FactoredNetwork):
    """esper's ``FactoredRecurrentActorCritic`` selection path, verbatim in torch ops (slow, exact)."""

    fused_evaluate = False  # esper's per-head evaluate_actions (the unfused update path)

    def __init__(self, *args, value_mode: str = "q_op", legacy: bool = False, **kwargs) -> None:
        if value_mode not in POLICY_VALUE_MODES:
            raise ValueError(f"value_mode must be one of {POLICY_VALUE_MODES}, got {value_mode!r}")
        super().__init__(*args, **kwargs)
        self.value_mode, self.legacy = value_mode, legacy

    def _value(self, lstm_out: Tensor, op: Tensor, op_masked: Tensor, q_values: Tensor) -> Tensor:
        if self.value_mode == "q_op":
            return self._compute_value(lstm_out, op)
        return (torch.softmax(op_masked, -1) * q_values).sum(-1)

    def forward(
        self,
        state,
        blueprint_indices,
        hidden=None,
        slot_mask=None,
        blueprint_mask=None,
        style_mask=None,
        tempo_mask=None,
        alpha_target_mask=None,
        alpha_speed_mask=None,
        alpha_curve_mask=None,
        op_mask=None,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict:
        """esper's forward: masked logits, one op draw (``noise [B*T, num_ops]`` optional), its value."""
        masks = mask_dict(
            slot_mask,
            blueprint_mask,
            style_mask,
            tempo_mask,
            alpha_target_mask,
            alpha_speed_mask,
            alpha_curve_mask,
            op_mask,
        )
        out = self.heads(state, blueprint_indices, hidden)
        if self.validate:
            validate_masks_and_logits({"op": out.logits["op"]}, {"op": op_mask}, where=" in forward()")
        masked = {
            h: (l if masks[h] is None else l.masked_fill(~masks[h], MASKED_LOGIT_VALUE)) for h, l in out.logits.items()
        }
        B, T = state.shape[:2]
        sampled = _draw(masked["op"].reshape(B * T, -1), False, noise, generator).view(B, T)
        result = {f"{h}_logits": masked[h] for h in HEAD_NAMES}
        result.update(
            value=self._value(out.lstm_out, sampled, masked["op"], out.q_values),
            lstm_out=out.lstm_out,
            sampled_op=sampled,
            hidden=out.hidden,
            q_values=out.q_values,
        )
        return result

    def get_action(
        self,
        state,
        blueprint_indices,
        hidden=None,
        slot_mask=None,
        blueprint_mask=None,
        style_mask=None,
        tempo_mask=None,
        alpha_target_mask=None,
        alpha_speed_mask=None,
        alpha_curve_mask=None,
        op_mask=None,
        deterministic=False,
        return_op_logits=False,
        *,
        noise: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        slot_by_op: Tensor | None = None,
    ):
        """esper's get_action (0872525b, or 97d9ba3f's double draw when ``legacy``).

        ``slot_by_op [B, num_ops, S]`` (esper HEAD's op-conditioned slot mask) restricts the slot head
        to the slots valid for the chosen op, as in FactoredPolicy.
        """
        noise = noise or {}
        masks = mask_dict(
            slot_mask,
            blueprint_mask,
            style_mask,
            tempo_mask,
            alpha_target_mask,
            alpha_speed_mask,
            alpha_curve_mask,
            op_mask,
        )
        if state.dim() == 2:
            state, blueprint_indices = state.unsqueeze(1), blueprint_indices.unsqueeze(1)
            masks = {h: (None if m is None else m.unsqueeze(1)) for h, m in masks.items()}
        with torch.inference_mode():
            fwd_noise = noise.get("op_forward" if self.legacy else "op")
            output = self.forward(
                state, blueprint_indices, hidden, *masks.values(), noise=fwd_noise, generator=generator
            )
            logits = {h: output[f"{h}_logits"][:, 0] for h in HEAD_NAMES}
            masks2d = {
                h: (torch.ones_like(logits[h], dtype=torch.bool) if m is None else m[:, 0]) for h, m in masks.items()
            }
            if self.validate:
                validate_masks_and_logits(logits, masks2d)
            lstm_out = output["lstm_out"][:, 0:1]
            if self.legacy:  # the bug: a second, independent op choice for the stored action
                op = _draw(logits["op"], deterministic, noise.get("op"), generator)
                values, sampled_op = output["value"][:, 0], output["sampled_op"][:, 0]
            elif deterministic:
                op = logits["op"].argmax(-1)
                values = self._value(lstm_out, op[:, None], logits["op"][:, None], output["q_values"][:, 0:1]).squeeze(
                    1
                )
                sampled_op = op
            else:
                op = output["sampled_op"][:, 0]
                values, sampled_op = output["value"][:, 0], op
            actions, log_probs, entropies = {"op": op}, {}, {}
            masks2d["style"], masks2d["slot"] = op_dependent_masks(
                op, masks2d["style"], masks2d["slot"], slot_by_op, self.num_styles, self.num_slots
            )
            for head in AFTER_OP:
                masked = logits[head].masked_fill(~masks2d[head], MASKED_LOGIT_VALUE)
                actions[head] = _draw(masked, deterministic, noise.get(head), generator)
                logits[head] = masked
            for head in ("op",) + AFTER_OP:
                logp = torch.log_softmax(logits[head], -1)
                log_probs[head] = logp.gather(-1, actions[head][:, None]).squeeze(-1)
                entropies[head] = _entropy_nats(logits[head])
            q_all = output["q_values"][:, 0]
            q_op = q_all.gather(-1, op[:, None]).squeeze(-1)
            expected = (torch.softmax(logits["op"], -1) * q_all).sum(-1)
        return GetActionResult(
            actions=actions,
            log_probs=log_probs,
            values=values,
            hidden=output["hidden"],
            sampled_op=sampled_op,
            op_logits=logits["op"] if return_op_logits else None,
            head_entropies=entropies,
            q_op=q_op,
            expected_value=expected,
        )
