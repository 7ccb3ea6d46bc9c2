"""``FactoredPolicyV2``: esper HEAD's actor-critic (value-head schema v2) with the fused, single-draw kernel.

Drop-in for esper-lite's ``FactoredRecurrentActorCritic`` at HEAD (2016337e): same constructor
``(state_dim, feature_dim, lstm_hidden_dim, lstm_layers, slot_config)``, module names, init and
state_dict keys (:mod:`esper_fast.network_v2`), and ``forward`` / ``get_action`` /
``evaluate_actions`` (six values) / ``predict_contributions`` / ``_compute_state_value`` /
``_compute_q`` with HEAD's signatures and result fields. ``get_action`` runs ONE
:func:`esper_fast.ops.actions_v2.select_actions_v2` launch: the op is chosen once (floored), the
network's V(s) is the returned ``values``, Q(s, op) from ``q_head`` and sum_a pi(a|s) Q(s, a) come
back alongside, every other head is canonicalised by the op and floored in the same pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from esper_fast.constants import HEAD_NAMES, MASKED_LOGIT_VALUE
from esper_fast.errors import KASMINA_HINT
from esper_fast.network import mask_dict
from esper_fast.network_v2 import FactoredNetworkV2, NetworkV2Mixin
from esper_fast.ops.actions_v2 import ActionSelectionV2, select_actions_v2
from esper_fast.ops.checks import raise_for_bad_head
from esper_fast.ops.select import select_op
from esper_fast.policy import value_read_op
from esper_fast.reference.actions_v2 import apply_probability_floor, effective_mask
from esper_fast.rules import AFTER_OP
from esper_fast.types import GetActionResult, Hidden

__all__ = ["FactoredPolicyV2", "FactoredPolicyV2Mixin", "GetActionResult"]


class FactoredPolicyV2Mixin(NetworkV2Mixin):
    """esper HEAD's forward / get_action on the fused kernel, over HEAD's attribute names only.

    Usable as a base in front of esper's own class, so that esper builds the modules and the fused
    kernel chooses the actions::

        from esper.tamiyo.networks import FactoredRecurrentActorCritic
        from esper.tamiyo.policy.action_masks import InvalidStateMachineError, MaskedCategorical
        from esper_fast.policy_v2 import FactoredPolicyV2Mixin

        class FusedActorCritic(FactoredPolicyV2Mixin, FactoredRecurrentActorCritic):
            invalid_state_error = InvalidStateMachineError   # esper's exception type
            def _validating(self) -> bool:                   # esper's validation switch
                return MaskedCategorical.validate

    (``FactoredRecurrentActorCritic.__init__`` runs unchanged; the mixin defines no ``__init__``.)
    Class attribute ``backend`` picks the select backend ("auto").
    """

    backend: str = "auto"

    # ---- input handling ---------------------------------------------------------------------------------
    def _check_inputs(self, state: Tensor, blueprint_indices: Tensor, masks: dict[str, Tensor | None]) -> None:
        """Shape/dtype checks naming the argument (no host sync)."""
        d = self.feature_net[0].in_features - self.num_slots * 4
        if state.dim() not in (2, 3) or state.shape[-1] != d:
            raise ValueError(f"state must be [B, {d}] or [B, T, {d}], got {list(state.shape)}")
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
            want = lead + (self.head_size(head),)
            if tuple(mask.shape) != want:
                raise ValueError(f"{head}_mask must have shape {list(want)}, got {list(mask.shape)}")

    # ---- forward (HEAD's positional order) -----------------------------------------------------------
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
        probability_floor: dict[str, float] | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor | Hidden]:
        """HEAD's ``_ForwardOutput`` for ``[B, T, ...]`` inputs.

        Keys: ``{head}_logits`` (masked with -1e4 where a mask is given), ``state_value`` V(s) ``[B, T]``,
        ``q_value`` Q(s, sampled_op) ``[B, T]``, ``lstm_out [B, T, H]``, ``sampled_op [B, T]`` (one
        select_op draw from the op distribution with the op floor of ``probability_floor``), ``hidden``.
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
        self._check_inputs(state, blueprint_indices, masks)
        lstm_out, new_hidden = self.trunk(state, blueprint_indices, hidden)
        logits = self.head_logits(lstm_out)
        masked = {
            h: (l if masks[h] is None else l.masked_fill(~masks[h], MASKED_LOGIT_VALUE)) for h, l in logits.items()
        }
        if self._validating():
            self._validate({"op": masked["op"]}, {"op": op_mask}, where=" in forward()")
        B, T = state.shape[:2]
        op_l = masked["op"].detach().float().reshape(B * T, -1)
        op_valid = None if op_mask is None else op_mask.reshape(B * T, -1)
        floor = float((probability_floor or {}).get("op") or 0.0)
        if floor > 0:
            valid = torch.ones_like(op_l, dtype=torch.bool) if op_valid is None else op_valid
            op_l = apply_probability_floor(op_l, valid, floor)
        sel = select_op(op_l, None, op_valid, generator=generator, backend=self.backend, validate=False)
        sampled_op = sel.op.view(B, T)
        out: dict[str, Tensor | Hidden] = {f"{h}_logits": masked[h] for h in HEAD_NAMES}
        out.update(
            state_value=self._compute_state_value(lstm_out),
            q_value=self._compute_q(lstm_out, sampled_op.clamp(min=0)),
            lstm_out=lstm_out,
            sampled_op=sampled_op,
            hidden=new_hidden,
        )
        return out

    # ---- get_action (rollout / bootstrap hot path) -----------------------------------------------------
    def get_action(
        self,
        state: Tensor,
        blueprint_indices: Tensor,
        hidden: Hidden | None = None,
        slot_mask: Tensor | None = None,
        slot_by_op_mask: Tensor | None = None,
        blueprint_mask: Tensor | None = None,
        style_mask: Tensor | None = None,
        tempo_mask: Tensor | None = None,
        alpha_target_mask: Tensor | None = None,
        alpha_speed_mask: Tensor | None = None,
        alpha_curve_mask: Tensor | None = None,
        op_mask: Tensor | None = None,
        deterministic: bool = False,
        return_op_logits: bool = False,
        probability_floor: dict[str, float] | None = None,
        *,
        noise: dict[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> GetActionResult:
        """HEAD's get_action: ``state [B, D]`` or ``[B, 1, D]``; masks ``[B, n]`` or ``[B, 1, n]``;
        ``slot_by_op_mask [B, num_ops, S]`` (replaces the slot mask by the chosen op's row).

        Runs under ``torch.inference_mode()``; one fused launch chooses every head (the op once).
        ``values`` = V(s) (state_value_head; the same for deterministic and stochastic calls);
        ``head_entropies`` are normalised (entropy / log #valid, HEAD's unit, HEAD_NAMES order); extras
        ``q_op`` = Q(s, op) from q_head and ``expected_value`` = sum_a pi(a|s) Q(s, a). Extras in:
        ``noise`` (head -> ``[B, n]`` Gumbel noise, exact tests) and ``generator``. No host sync when
        validation is off (a bad row then comes back as action -1 / NaN instead of raising).
        """
        if state.dim() == 2:
            state = state.unsqueeze(1)
        if blueprint_indices.dim() == 2:
            blueprint_indices = blueprint_indices.unsqueeze(1)
        if state.dim() == 3 and state.shape[1] != 1:
            raise ValueError(
                f"get_action() requires seq_len=1, got {state.shape[1]}. This method is for single-step "
                "rollout collection. For multi-step sequence processing, use forward() directly."
            )
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
        masks = {h: (m.unsqueeze(1) if m is not None and m.dim() == 2 else m) for h, m in masks.items()}
        self._check_inputs(state, blueprint_indices, masks)
        B = state.shape[0]
        masks = {h: (None if m is None else m[:, 0]) for h, m in masks.items()}
        if slot_by_op_mask is not None:
            if slot_by_op_mask.dim() != 3:
                raise ValueError(
                    f"slot_by_op_mask must have shape [batch, NUM_OPS, num_slots], got {tuple(slot_by_op_mask.shape)}"
                )
            if slot_by_op_mask.device != state.device:
                raise ValueError(
                    f"slot_by_op_mask must be on the same device as slot_logits "
                    f"(slot_by_op_mask={slot_by_op_mask.device}, slot_logits={state.device})"
                )
            if tuple(slot_by_op_mask.shape) != (B, self.num_ops, self.num_slots) or slot_by_op_mask.dtype != torch.bool:
                raise ValueError(
                    f"slot_by_op_mask must be a bool [batch, NUM_OPS, num_slots] = "
                    f"[{B}, {self.num_ops}, {self.num_slots}] tensor, got "
                    f"{slot_by_op_mask.dtype} {tuple(slot_by_op_mask.shape)}"
                )
        validating = self._validating()
        with torch.no_grad() if torch.compiler.is_compiling() else torch.inference_mode():
            cells = state.device.type == "cpu" and B <= 128  # see FactoredPolicy.get_action
            lstm_out, new_hidden = self.trunk(state, blueprint_indices, hidden, explicit_cells=cells)
            logits, value, q = self.action_heads(lstm_out[:, 0])
            if validating:  # HEAD's forward() checks the op mask and op logits first
                self._validate({"op": logits["op"]}, {"op": masks["op"]}, where=" in forward()")
            sel = select_actions_v2(
                logits,
                masks,
                q,
                value,
                floors=probability_floor,
                deterministic=deterministic,
                noise=noise,
                generator=generator,
                slot_by_op=slot_by_op_mask,
                backend=self.backend,
            )
            if validating:
                self._raise_for_bad_heads(sel, logits, masks, slot_by_op_mask)
            value_op = value_read_op(q, sel.actions["op"], sel.q_op)  # the op q_op was read at (policy.py)
            op_logits = None
            if return_op_logits:
                op_logits = (
                    logits["op"] if masks["op"] is None else logits["op"].masked_fill(~masks["op"], MASKED_LOGIT_VALUE)
                )
        return GetActionResult(
            actions=sel.actions,
            log_probs=sel.log_probs,
            values=sel.values,
            hidden=new_hidden,
            sampled_op=value_op,
            op_logits=op_logits,
            head_entropies={h: sel.entropies[h] for h in HEAD_NAMES},
            q_op=sel.q_op,
            expected_value=sel.expected_value,
        )

    def _raise_for_bad_heads(
        self,
        sel: ActionSelectionV2,
        logits: dict[str, Tensor],
        masks: dict[str, Tensor | None],
        slot_by_op: Tensor | None,
    ) -> None:
        """HEAD's per-head validation (op, then esper's order): empty effective mask -> ``invalid_state_error``
        ("No valid actions available"), inf/nan logits -> ``ValueError``. One sync on the happy path."""
        ok = [(a >= 0).all() for a in sel.actions.values()] + [torch.isfinite(l).all() for l in logits.values()]
        if bool(torch.stack(ok).all()):
            return
        op = sel.actions["op"]
        for head in ("op",) + AFTER_OP:
            if head == "op":
                valid = masks["op"]
            else:  # a row whose op is bad is reported under the op head, not as empty here
                eff = effective_mask(
                    head, op, masks[head], logits[head].shape[-1], slot_by_op if head == "slot" else None
                )
                valid = eff | (op < 0).unsqueeze(-1)
            raise_for_bad_head(
                head,
                logits[head],
                valid,
                valid_only=False,
                empty_error=self.invalid_state_error,
                cause="after the op-dependent canonicalisation",
                hint=KASMINA_HINT,
                nonfinite_hint="This indicates network instability.",
            )


class FactoredPolicyV2(FactoredPolicyV2Mixin, FactoredNetworkV2):
    """esper HEAD's ``FactoredRecurrentActorCritic`` (schema v2) with fused single-draw selection.

    Args:
        state_dim, feature_dim, lstm_hidden_dim, lstm_layers, slot_config: HEAD's constructor
            (positional order and defaults); ``state_dim=None`` is HEAD's observation size for the slot
            count (116 for 3 slots, what esper HEAD's bundle passes by default), so
            ``FactoredPolicyV2()`` loads a checkpoint of esper HEAD's default network strictly.
        backend: select backend ("auto" picks the fastest available for the tensors' device).

    Set ``FactoredPolicyV2.validate = False`` for the sync-free path (HEAD: ``MaskedCategorical.validate``).
    To run the fused kernel on esper's own class instead (esper builds the modules), use
    :class:`FactoredPolicyV2Mixin` as the first base of a subclass of it (see its docstring).
    """

    def __init__(
        self,
        state_dim: int | None = None,
        feature_dim: int = 512,
        lstm_hidden_dim: int = 512,
        lstm_layers: int = 1,
        slot_config: object = None,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__(state_dim, feature_dim, lstm_hidden_dim, lstm_layers, slot_config)
        self.backend = backend
