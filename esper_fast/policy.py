"""``FactoredPolicy``: esper's recurrent actor-critic with the op chosen once, fused and sync-free.

Drop-in for esper's ``FactoredRecurrentActorCritic`` (commit 0872525b): same constructor, module
names, state_dict keys, ``forward`` / ``get_action`` / ``evaluate_actions`` / ``get_initial_hidden`` /
``_compute_value``. The difference is by construction: the op that is returned as the action, its
log-prob and the value all come from ONE :func:`esper_fast.select_op` call, so the value can never
be conditioned on another op (esper's double-draw bug).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from esper_fast.constants import HEAD_NAMES, MASKED_LOGIT_VALUE, POLICY_VALUE_MODES
from esper_fast.network import FactoredNetwork, mask_dict, validate_masks_and_logits
from esper_fast.ops.actions import select_actions
from esper_fast.ops.select import select_op
from esper_fast.types import GetActionResult, Hidden

__all__ = ["FactoredPolicy", "GetActionResult"]


# No esper head has more actions than this; a larger size almost surely comes from esper HEAD's
# positional constructor (state_dim, feature_dim, lstm_hidden_dim, lstm_layers, slot_config).
MAX_PLAUSIBLE_HEAD_SIZE = 64


def reject_head_style_call(**sizes: object) -> None:
    """Refuses head sizes that only a HEAD-style positional call produces, e.g. ``FactoredPolicy(116, 512, 512, 1)``
    (512 slots, 512 blueprints, 1 style) or a ``SlotConfig`` in a size slot, pointing to FactoredPolicyV2."""
    hint = (
        "esper HEAD's constructor is (state_dim, feature_dim, lstm_hidden_dim, lstm_layers, slot_config): "
        "use esper_fast.FactoredPolicyV2 for HEAD's network (schema v2); FactoredPolicy is esper 0872525b's "
        "(state_dim, num_slots, num_blueprints, num_styles, ...)"
    )
    for name, value in sizes.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"FactoredPolicy: {name} must be an int or None, got {type(value).__name__}. {hint}")
        if value > MAX_PLAUSIBLE_HEAD_SIZE:
            raise ValueError(
                f"FactoredPolicy: {name}={value} is implausible (esper heads have at most "
                f"{MAX_PLAUSIBLE_HEAD_SIZE} actions). {hint}"
            )


def value_read_op(q: Tensor, op: Tensor, q_op: Tensor) -> Tensor:
    """``[N]`` int64: the op the fused kernel read its ``q_op [N]`` at, checked against its own inputs.

    ``op [N]`` where ``q_op`` equals ``q [N, A]`` at ``op`` bit for bit (every backend reads Q(s, op) as
    ``float(q[n, op])``), else -1: a value read at any other op (unless Q happens to be the same float there) or a
    bad row's NaN (whose op is -1 too) does not pass as the op. This is ``GetActionResult.sampled_op`` of the fused
    policies, so
    ``sampled_op == actions["op"]`` (``charts/op_agreement``) observes the kernel instead of comparing a
    tensor with itself. Four small sync-free ops.
    """
    read = q.gather(-1, op.clamp(min=0).unsqueeze(-1)).squeeze(-1).float()
    return torch.where(read == q_op, op, -1)


class FactoredPolicy(FactoredNetwork):
    """esper's ``FactoredRecurrentActorCritic`` with fused, single-draw op selection.

    Args:
        state_dim ... lstm_layers, slot_config: esper's constructor arguments and defaults
            (``slot_config``: esper's ``SlotConfig`` or any object with ``num_slots``; sizes the slot
            head when ``num_slots`` is None).
        value_mode: ``"q_op"`` (esper's contract: value = Q(s, chosen op)) or ``"expected"``
            (value = V(s) = sum_a pi(a|s) Q(s, a) from the same kernel pass; op-independent).
        backend: select_op backend ("auto" picks the fastest available for the tensors' device).

        validate: this instance's mask/logit validation (one host sync) on or off; None (default)
            follows the class flag ``FactoredPolicy.validate`` at call time (kept for compatibility).
    """

    def __init__(
        self,
        state_dim: int,
        num_slots: int | None = None,
        num_blueprints: int | None = None,
        num_styles: int | None = None,
        num_tempo: int | None = None,
        num_alpha_targets: int | None = None,
        num_alpha_speeds: int | None = None,
        num_alpha_curves: int | None = None,
        num_ops: int | None = None,
        feature_dim: int = 512,
        lstm_hidden_dim: int = 512,
        lstm_layers: int = 1,
        slot_config: Any | None = None,
        *,
        value_mode: str = "q_op",
        backend: str = "auto",
        validate: bool | None = None,
    ) -> None:
        if value_mode not in POLICY_VALUE_MODES:
            raise ValueError(f"value_mode must be one of {POLICY_VALUE_MODES}, got {value_mode!r}")
        reject_head_style_call(
            num_slots=num_slots,
            num_blueprints=num_blueprints,
            num_styles=num_styles,
            num_tempo=num_tempo,
            num_alpha_targets=num_alpha_targets,
            num_alpha_speeds=num_alpha_speeds,
            num_alpha_curves=num_alpha_curves,
            num_ops=num_ops,
        )
        super().__init__(
            state_dim,
            num_slots,
            num_blueprints,
            num_styles,
            num_tempo,
            num_alpha_targets,
            num_alpha_speeds,
            num_alpha_curves,
            num_ops,
            feature_dim,
            lstm_hidden_dim,
            lstm_layers,
            slot_config,
            validate=validate,
        )
        self.value_mode = value_mode
        self.backend = backend

    # ---- input handling ---------------------------------------------------------------------------
    def check_inputs(self, state: Tensor, blueprint_indices: Tensor, masks: dict[str, Tensor | None]) -> None:
        """Shape/dtype checks with messages naming the argument (no host sync)."""
        self.check_trunk_inputs(state, blueprint_indices)
        if state.dim() not in (2, 3) or state.shape[-1] != self.state_dim:
            raise ValueError(
                f"state must be [B, {self.state_dim}] or [B, T, {self.state_dim}], got {list(state.shape)}"
            )
        lead = tuple(state.shape[:-1])
        if blueprint_indices.dtype != torch.int64:
            raise TypeError(f"blueprint_indices must be int64, got {blueprint_indices.dtype}")
        if tuple(blueprint_indices.shape) != lead + (self.num_slots,):
            raise ValueError(
                f"blueprint_indices must have shape {list(lead + (self.num_slots,))}, "
                f"got {list(blueprint_indices.shape)}"
            )
        for head, mask in masks.items():
            if mask is None:
                continue
            if mask.dtype != torch.bool:
                raise TypeError(f"{head}_mask must be a bool tensor, got {mask.dtype}")
            if tuple(mask.shape) != lead + (self.head_sizes[head],):
                raise ValueError(
                    f"{head}_mask must have shape {list(lead + (self.head_sizes[head],))}, got {list(mask.shape)}"
                )

    def _masked_logits(self, logits: dict[str, Tensor], masks: dict[str, Tensor | None]) -> dict[str, Tensor]:
        return {h: (l if masks[h] is None else l.masked_fill(~masks[h], MASKED_LOGIT_VALUE)) for h, l in logits.items()}

    # ---- forward (esper's positional order) ------------------------------------------------------
    def forward(
        self,
        state: Tensor,
        blueprint_indices: Tensor,
        hidden: Hidden | None = None,
        slot_mask: Tensor | None = None,
        blueprint_mask: Tensor | None = None,
        style_mask: Tensor | None = None,
        tempo_mask: Tensor | None = None,
        alpha_target_mask: Tensor | None = None,
        alpha_speed_mask: Tensor | None = None,
        alpha_curve_mask: Tensor | None = None,
        op_mask: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor | Hidden]:
        """esper's ``_ForwardOutput`` for ``[B, T, ...]`` inputs, plus ``q_values [B, T, num_ops]``.

        Samples the op once (one select_op call); ``value`` is Q(s, sampled_op) (``q_op`` mode) or
        sum_a pi(a|s) Q(s, a) (``expected``), computed differentiably from the same op.
        """
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
        self.check_inputs(state, blueprint_indices, masks)
        out = self.heads(state, blueprint_indices, hidden)
        if self.validate:
            validate_masks_and_logits(
                {"op": out.logits["op"]},
                {"op": op_mask},
                where=" in forward()",
                indices={"blueprint_indices": (blueprint_indices, None, self.num_blueprints)},
            )
        masked = self._masked_logits(out.logits, masks)
        B, T = state.shape[:2]
        flat_mask = None if op_mask is None else op_mask.reshape(B * T, -1)
        sel = select_op(
            out.logits["op"].detach().reshape(B * T, -1),
            out.q_values.detach().reshape(B * T, -1),
            flat_mask,
            generator=generator,
            backend=self.backend,
            validate=False,
        )
        sampled_op = sel.op.view(B, T)
        if self.value_mode == "q_op":
            value = out.q_values.gather(-1, sampled_op.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        else:
            value = (torch.softmax(masked["op"], -1) * out.q_values).sum(-1)
        result: dict[str, Tensor | Hidden] = {f"{h}_logits": masked[h] for h in HEAD_NAMES}
        result.update(
            value=value, lstm_out=out.lstm_out, sampled_op=sampled_op, hidden=out.hidden, q_values=out.q_values
        )
        return result

    # ---- get_action (rollout / bootstrap hot path) ------------------------------------------------
    def get_action(
        self,
        state: Tensor,
        blueprint_indices: Tensor,
        hidden: Hidden | None = None,
        slot_mask: Tensor | None = None,
        blueprint_mask: Tensor | None = None,
        style_mask: Tensor | None = None,
        tempo_mask: Tensor | None = None,
        alpha_target_mask: Tensor | None = None,
        alpha_speed_mask: Tensor | None = None,
        alpha_curve_mask: Tensor | None = None,
        op_mask: Tensor | None = None,
        deterministic: bool = False,
        return_op_logits: bool = False,
        *,
        noise: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        slot_by_op: Tensor | None = None,
    ) -> GetActionResult:
        """One decision per row: ``state [B, D]`` (or ``[B, 1, D]``), masks ``[B, n]`` (or ``[B, 1, n]``).

        Runs under ``torch.inference_mode()``. The op is chosen once (argmax if ``deterministic``);
        its log-prob, Q(s, op) and sum_a pi(a|s) Q(s, a) come from the same kernel; then style
        (forced to SIGMOID_ADD unless op is GERMINATE/SET_ALPHA_TARGET) and the other heads.
        ``head_entropies`` are in nats over the valid entries (esper 0872525b's GetActionResult had no
        such field; esper HEAD's, and :class:`esper_fast.FactoredPolicyV2`'s, are normalised by log #valid).
        Extras: ``noise`` (head -> ``[B, n]`` Gumbel noise, for exact tests), ``generator``,
        ``slot_by_op [B, num_ops, S]`` (slots valid per op). No host sync when validation is off.
        """
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
        self.check_inputs(state, blueprint_indices, masks)
        if state.dim() == 3 and state.shape[1] != 1:
            raise ValueError(
                f"get_action takes one timestep: state must be [B, D] or [B, 1, D], got {list(state.shape)}"
            )
        if state.dim() == 2:
            state, blueprint_indices = state.unsqueeze(1), blueprint_indices.unsqueeze(1)
        masks = {h: (None if m is None else m.reshape(m.shape[0], -1)) for h, m in masks.items()}
        # inference_mode as esper; no_grad while torch.compile traces (inductor cannot take views of
        # parameters inside an inference-mode region).
        with torch.no_grad() if torch.compiler.is_compiling() else torch.inference_mode():
            # One step on CPU at small batch: explicit cells (oneDNN re-packs nn.LSTM's weights per call:
            # 4.5x at batch 1, still faster at 64, slower at 512 - bench_get_action_cpu); else nn.LSTM.
            cells = state.device.type == "cpu" and state.shape[0] <= 128
            lstm_out, new_hidden = self.trunk(state, blueprint_indices, hidden, explicit_cells=cells)
            logits, q = self.action_heads(lstm_out[:, 0])
            if self.validate:
                validate_masks_and_logits(
                    logits, masks, indices={"blueprint_indices": (blueprint_indices, None, self.num_blueprints)}
                )
            sel = select_actions(
                logits,
                masks,
                q,
                deterministic=deterministic,
                noise=noise,
                generator=generator,
                slot_by_op=slot_by_op,
                backend=self.backend,
                validate=self.validate and slot_by_op is not None,
            )  # slot_by_op may empty a slot row
            values = sel.q_op if self.value_mode == "q_op" else sel.expected_value
            value_op = value_read_op(q, sel.actions["op"], sel.q_op)
            op_logits = None
            if return_op_logits:
                op_logits = self._masked_logits({"op": logits["op"]}, {"op": masks["op"]})["op"]
        return GetActionResult(
            actions=sel.actions,
            log_probs=sel.log_probs,
            values=values,
            hidden=new_hidden,
            sampled_op=value_op,
            op_logits=op_logits,
            head_entropies=sel.entropies,
            q_op=sel.q_op,
            expected_value=sel.expected_value,
        )
