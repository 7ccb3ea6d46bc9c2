"""esper HEAD's recurrent actor-critic (value-head schema v2): modules, init, trunk, heads, evaluation.

The module names, registration order, shapes, buffers and init are esper-lite's
``FactoredRecurrentActorCritic`` at HEAD (2016337e, read from esper-lite's
``src/esper/tamiyo/networks/factored_lstm.py``; facts in docs/esper-head-ppo.md), so a HEAD state_dict (78 keys with the
defaults) loads with ``strict=True`` both ways, and the same ``torch.manual_seed`` builds the same
weights. What differs from 0872525b (:mod:`esper_fast.network`):

* ``lstm`` is a residual LSTM: ``input_proj`` (Linear, or Identity when feature_dim == H), then per
  layer ``layers.{i}`` (a one-layer ``nn.LSTM``), ``layer_norms.{i}`` and a residual add; forget-gate
  bias ``1 + log(L)`` in both biases; ``lstm_ln`` is an Identity.
* ``state_value_head`` V(s) (H -> H/2 LN ReLU -> H/4 LN ReLU -> H/8 ReLU -> 1) is the PPO baseline;
  ``q_head`` (the old op-conditioned critic, 4 layers with LN) is an auxiliary whose input is detached;
  ``contribution_predictor`` (H -> H/2 LN ReLU Dropout(0.1) -> H/4 ReLU -> S) an auxiliary head.
* Blueprint index -1 (exactly) is the empty slot; anything else outside [0, 13) raises ``ValueError``
  when validation is on (``IndexError`` from the embedding when off).

The behaviour lives in :class:`NetworkV2Mixin`, written against HEAD's attribute names only, so it
works both on :class:`FactoredNetworkV2` and on a subclass of esper's own class
(see :class:`esper_fast.FactoredPolicyV2`).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper_fast.constants import (
    DEFAULT_BLUEPRINT_EMBED_DIM,
    DEFAULT_FEATURE_DIM,
    DEFAULT_LSTM_HIDDEN_DIM,
    HEAD_NAMES,
    MASKED_LOGIT_VALUE,
    get_action_head_sizes,
)
from esper_fast.constants_v2 import VALUE_HEAD_SCHEMA_VERSION, get_obs_v3_size
from esper_fast.errors import InvalidStateMachineError
from esper_fast.network import (
    SMALL_HEADS,
    BlueprintEmbedding,
    _mlp_head,
    mask_dict,
    validate_masks_and_logits,
)
from esper_fast.reference.actions_v2 import apply_probability_floor, effective_mask
from esper_fast.types import Hidden

__all__ = ["BlueprintEmbeddingV2", "FactoredNetworkV2", "NetworkV2Mixin", "ResidualLSTM", "slot_count"]


class BlueprintEmbeddingV2(BlueprintEmbedding):
    """HEAD's blueprint embedding: exactly -1 maps to the null row (13); other indices pass through.

    Range checks live in :meth:`NetworkV2Mixin.check_blueprint_indices` (they sync with the host), so
    an out-of-range index reaches ``nn.Embedding`` (``IndexError`` on CPU) when validation is off.
    """

    def __init__(self, num_blueprints: int = 13, embed_dim: int = DEFAULT_BLUEPRINT_EMBED_DIM) -> None:
        super().__init__(num_blueprints, embed_dim)
        self.num_blueprints = num_blueprints

    def forward(self, blueprint_indices: Tensor) -> Tensor:
        """``[..., S]`` int64 (0..12 or -1) -> ``[..., S, embed_dim]``."""
        return self.embedding(torch.where(blueprint_indices == -1, self._null_idx, blueprint_indices))


def lstm_step_cells(x: Tensor, h: Tensor, c: Tensor, lstm: nn.LSTM) -> tuple[Tensor, Tensor, Tensor]:
    """A one-layer ``nn.LSTM`` run as explicit cells (gate order i, f, g, o; same parameters).

    ``x [B, T, in]``, ``h``/``c`` ``[B, H]`` -> (outputs ``[B, T, H]``, h, c). For single steps on CPU,
    where oneDNN re-packs nn.LSTM's weights on every call (see FactoredNetwork._lstm_unrolled).
    """
    x_proj = F.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)
    outs = []
    for t in range(x.shape[1]):
        i, f, g, o = (x_proj[:, t] + F.linear(h, lstm.weight_hh_l0)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs, dim=1), h, c


class ResidualLSTM(nn.Module):
    """HEAD's ResidualLSTM layout: ``input_proj``, ``layers.{i}`` (nn.LSTM, one layer each),
    ``layer_norms.{i}``; per layer ``x = LN(lstm_i(x)) + x``. Hidden ``(h, c)`` each ``[L, B, H]``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, batch_first: bool = True) -> None:
        super().__init__()
        self.num_layers, self.hidden_size, self.batch_first = num_layers, hidden_size, batch_first
        self.input_proj = nn.Linear(input_size, hidden_size) if input_size != hidden_size else nn.Identity()
        self.layers = nn.ModuleList()
        self.layer_norms = nn.ModuleList()
        for _ in range(num_layers):
            self.layers.append(nn.LSTM(hidden_size, hidden_size, num_layers=1, batch_first=batch_first))
            self.layer_norms.append(nn.LayerNorm(hidden_size))
        self.dropout = nn.Identity()  # HEAD builds it with dropout 0.0
        forget_bias = 1.0 + math.log(num_layers)
        for layer in self.layers:
            for name, param in layer.named_parameters():
                if "weight" in name:
                    nn.init.orthogonal_(param.data)
                else:  # both biases: zero, forget-gate quarter [n/4, n/2) = 1 + log(L)
                    nn.init.zeros_(param)
                    n = param.shape[0]
                    param.data[n // 4 : n // 2].fill_(forget_bias)

    def forward(self, x: Tensor, hidden: Hidden | None = None, explicit_cells: bool = False) -> tuple[Tensor, Hidden]:
        """``x [B, T, in]`` -> (``[B, T, H]``, (h, c) each ``[L, B, H]``); ``explicit_cells``: see
        :func:`lstm_step_cells`."""
        return residual_lstm_forward(self, x, hidden, explicit_cells)


def residual_lstm_forward(
    lstm: nn.Module, x: Tensor, hidden: Hidden | None, explicit_cells: bool = False
) -> tuple[Tensor, Hidden]:
    """HEAD's ResidualLSTM forward over its attributes (works on esper's own module too)."""
    B, L, H = x.shape[0], len(lstm.layers), lstm.layers[0].hidden_size
    if hidden is None:
        zeros = torch.zeros(L, B, H, device=x.device)
        hidden = (zeros, zeros)
    x = lstm.input_proj(x)
    hs, cs = [], []
    for i, (layer, ln) in enumerate(zip(lstm.layers, lstm.layer_norms)):
        residual = x
        if explicit_cells:
            x, h, c = lstm_step_cells(x, hidden[0][i], hidden[1][i], layer)
        else:
            x, (h, c) = layer(x, (hidden[0][i : i + 1], hidden[1][i : i + 1]))
            h, c = h[0], c[0]
        x = ln(x) + residual
        hs.append(h)
        cs.append(c)
    return x, (torch.stack(hs), torch.stack(cs))


def slot_count(slot_config: object) -> int:
    """Number of slots from HEAD's ``SlotConfig`` (``.num_slots`` / ``.slot_ids``), an int, or None (3)."""
    if slot_config is None:
        return 3
    if isinstance(slot_config, int):
        return slot_config
    if hasattr(slot_config, "num_slots"):
        return int(slot_config.num_slots)
    if hasattr(slot_config, "slot_ids"):
        return len(slot_config.slot_ids)
    raise TypeError(
        f"slot_config must be a SlotConfig (with num_slots), an int or None, got {type(slot_config).__name__}"
    )


class NetworkV2Mixin:
    """The differentiable behaviour of HEAD's network over HEAD's attribute names.

    Needs: ``feature_net, lstm (ResidualLSTM layout), lstm_ln, {slot, blueprint, style, tempo,
    alpha_target, alpha_speed, alpha_curve, op}_head, blueprint_embedding, state_value_head, q_head,
    contribution_predictor, num_ops, num_slots, lstm_hidden_dim, lstm_layers``.

    Hooks a subclass of esper's own class overrides: :meth:`_validating` (default: the class flag
    ``validate``; esper reads ``MaskedCategorical.validate``) and ``invalid_state_error`` (the exception
    class raised for empty masks; default :class:`esper_fast.InvalidStateMachineError`).
    """

    validate: ClassVar[bool] = True
    invalid_state_error: ClassVar[type[Exception]] = InvalidStateMachineError
    value_head_schema_version: ClassVar[int] = VALUE_HEAD_SCHEMA_VERSION

    def _validating(self) -> bool:
        """The instance's own ``validate`` (e.g. set by :func:`esper_fast.ppo.agent.validation_off`), else the
        class flag."""
        own = self.__dict__.get("validate")
        return bool(type(self).validate) if own is None else bool(own)

    def _validate(self, logits: dict[str, Tensor], masks: dict[str, Tensor | None], where: str = "") -> None:
        """:func:`esper_fast.network.validate_masks_and_logits`, raising ``invalid_state_error`` for empty masks."""
        try:
            validate_masks_and_logits(logits, masks, where)
        except InvalidStateMachineError as exc:
            if self.invalid_state_error is InvalidStateMachineError:
                raise
            raise self.invalid_state_error(str(exc)) from exc

    def head_module(self, head: str) -> nn.Sequential:
        return getattr(self, f"{head}_head")

    _SIZE_ATTR: ClassVar[dict[str, str]] = {
        "slot": "num_slots",
        "blueprint": "num_blueprints",
        "style": "num_styles",
        "tempo": "num_tempo",
        "alpha_target": "num_alpha_targets",
        "alpha_speed": "num_alpha_speeds",
        "alpha_curve": "num_alpha_curves",
        "op": "num_ops",
    }

    def head_size(self, head: str) -> int:
        """Actions of ``head`` (HEAD's ``num_*`` attributes)."""
        return int(getattr(self, self._SIZE_ATTR[head]))

    # ---- trunk --------------------------------------------------------------------------------------
    def get_initial_hidden(self, batch_size: int, device: torch.device | str | None = None) -> Hidden:
        """Zero LSTM state ``(h, c)``, each ``[L, batch_size, H]`` (default float dtype)."""
        shape = (self.lstm_layers, batch_size, self.lstm_hidden_dim)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def check_blueprint_indices(self, blueprint_indices: Tensor) -> None:
        """HEAD's range check (one sync): only -1 or [0, num_blueprints) are valid -> else ``ValueError``."""
        nb = self.blueprint_embedding.embedding.num_embeddings - 1
        bad = (blueprint_indices < -1) | (blueprint_indices >= nb)
        if bool(bad.any()):
            vals = torch.unique(blueprint_indices[bad]).tolist()
            raise ValueError(
                f"BlueprintEmbedding received invalid indices: {vals}. Valid range is -1 (inactive) or [0, {nb})."
            )

    def trunk(
        self, state: Tensor, blueprint_indices: Tensor, hidden: Hidden | None, explicit_cells: bool = False
    ) -> tuple[Tensor, Hidden]:
        """``state [B,T,D]``, ``blueprint_indices [B,T,S]`` -> (lstm_out ``[B,T,H]``, new hidden)."""
        if self._validating():
            self.check_blueprint_indices(blueprint_indices)
        if hidden is None:
            hidden = self.get_initial_hidden(state.shape[0], state.device)
        bp = self.blueprint_embedding(blueprint_indices).flatten(start_dim=-2)
        features = self.feature_net(torch.cat([state, bp.to(state.dtype)], dim=-1))
        lstm_out, new_hidden = residual_lstm_forward(self.lstm, features, hidden, explicit_cells)
        return self.lstm_ln(lstm_out), new_hidden

    # ---- value heads ------------------------------------------------------------------------------------
    def _compute_state_value(self, lstm_out: Tensor) -> Tensor:
        """V(s): ``state_value_head(lstm_out)`` ``[..., H] -> [...]`` (full gradient; the PPO baseline)."""
        return self.state_value_head(lstm_out).squeeze(-1)

    def _compute_q(self, lstm_out: Tensor, op: Tensor) -> Tensor:
        """Q(s, op) from ``q_head(cat(lstm_out.detach(), one_hot(op)))``, shape of ``op`` (auxiliary)."""
        lstm_out = lstm_out.detach()
        one_hot = F.one_hot(op, num_classes=self.num_ops).to(lstm_out)
        return self.q_head(torch.cat([lstm_out, one_hot], dim=-1)).squeeze(-1)

    def q_values(self, lstm_out: Tensor) -> Tensor:
        """Q(s, a) for every op a at once (detached input): ``[..., H] -> [..., num_ops]``.

        q_head's first Linear splits as ``W [x; onehot(a)] + b = W_x x + b + W_op[:, a]``: one matmul for
        the state part, then the rest of q_head on ``[..., num_ops, H/2]``.
        """
        x = lstm_out.detach()
        if not (isinstance(self.q_head, nn.Sequential) and isinstance(self.q_head[0], nn.Linear)):
            ops = torch.arange(self.num_ops, device=x.device).expand(*x.shape[:-1], self.num_ops)
            return self._compute_q(x.unsqueeze(-2).expand(*x.shape[:-1], self.num_ops, x.shape[-1]), ops)
        first = self.q_head[0]
        H = x.shape[-1]
        pre = F.linear(x, first.weight[:, :H], first.bias).unsqueeze(-2) + first.weight[:, H:].t()
        return self.q_head[1:](pre).squeeze(-1)

    # ---- logits -------------------------------------------------------------------------------------------
    def head_logits(self, lstm_out: Tensor) -> dict[str, Tensor]:
        """Raw logits of every head, HEAD_NAMES order: ``[..., H] -> [..., n_head]``."""
        return {h: self.head_module(h)(lstm_out) for h in HEAD_NAMES}

    def _fusable(self) -> bool:
        """Whether every head has HEAD's layout (what :meth:`action_heads`' stacked GEMMs assume)."""

        def seq(m, n):
            return isinstance(m, nn.Sequential) and len(m) == n and isinstance(m[0], nn.Linear)

        small = all(seq(self.head_module(h), 3) and isinstance(self.head_module(h)[2], nn.Linear) for h in SMALL_HEADS)
        return (
            small
            and seq(self.blueprint_head, 5)
            and isinstance(self.blueprint_head[2], nn.Linear)
            and isinstance(self.blueprint_head[4], nn.Linear)
            and seq(self.state_value_head, 9)
            and seq(self.q_head, 9)
        )

    def _fused_first_layers(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(W1, b1, W2, b2): first Linears of the 7 small heads, blueprint_head, state_value_head and
        q_head's state part stacked; the small heads' output Linears block-diagonal. Cached in eager
        mode until a parameter changes (version counters)."""
        small = [self.head_module(h) for h in SMALL_HEADS]
        firsts = [m[0] for m in small] + [self.blueprint_head[0], self.state_value_head[0], self.q_head[0]]
        params = [p for m in firsts for p in (m.weight, m.bias)] + [p for m in small for p in (m[2].weight, m[2].bias)]
        cacheable = not torch.compiler.is_compiling() and not (
            params[0].is_cuda and torch.cuda.is_current_stream_capturing()
        )
        key = tuple((p.data_ptr(), p._version) for p in params) if cacheable else None
        cached = self.__dict__.get("_fused_cache_v2")
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        H = self.lstm_hidden_dim
        w1 = torch.cat([m.weight for m in firsts[:-1]] + [self.q_head[0].weight[:, :H]])
        b1 = torch.cat([m.bias for m in firsts])
        w2 = torch.block_diag(*[m[2].weight for m in small])
        b2 = torch.cat([m[2].bias for m in small])
        weights = (w1, b1, w2, b2)
        if key is not None:
            self.__dict__["_fused_cache_v2"] = (key, weights)
        return weights

    def action_heads(self, lstm_out: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Inference path for ``lstm_out [N, H]``: (head -> logits ``[N, n]``, V(s) ``[N]``, Q ``[N, num_ops]``).

        Same parameters and math as :meth:`head_logits` / :meth:`_compute_state_value` /
        :meth:`q_values`, with every first layer in one GEMM (floats differ only by GEMM rounding).
        """
        if not self._fusable():  # a head was replaced by a custom module: the plain path, same results
            return self.head_logits(lstm_out), self._compute_state_value(lstm_out), self.q_values(lstm_out)
        w1, b1, w2, b2 = self._fused_first_layers()
        half = self.state_value_head[0].out_features
        widths = [self.head_module(h)[0].out_features for h in SMALL_HEADS]
        n_small, H = sum(widths), self.blueprint_head[0].out_features
        z = F.linear(lstm_out, w1, b1)
        small_logits = F.linear(torch.relu(z[:, :n_small]), w2, b2)
        bp = self.blueprint_head
        bp_logits = bp[4](torch.relu(bp[2](torch.relu(z[:, n_small : n_small + H]))))
        z_v = z[:, n_small + H : n_small + H + half]
        value = self.state_value_head[1:](z_v).squeeze(-1)
        pre = z[:, n_small + H + half :].unsqueeze(-2) + self.q_head[0].weight[:, lstm_out.shape[-1] :].t()
        q = self.q_head[1:](pre).squeeze(-1)
        logits, start = {"blueprint": bp_logits}, 0
        for h in SMALL_HEADS:
            k = self.head_module(h)[2].out_features
            logits[h] = small_logits[:, start : start + k]
            start += k
        return {h: logits[h] for h in HEAD_NAMES}, value, q

    # ---- auxiliary contribution head --------------------------------------------------------------------
    def predict_contributions(
        self, state: Tensor, blueprint_indices: Tensor, hidden: Hidden, stop_gradient: bool = True
    ) -> Tensor:
        """HEAD's per-slot contribution prediction: ``state [B, D]``, ``blueprint_indices [B, S]`` -> ``[B, S]``."""
        lstm_out, _ = self.trunk(state.unsqueeze(1), blueprint_indices.unsqueeze(1), hidden)
        lstm_out = lstm_out.squeeze(1)
        if stop_gradient:
            lstm_out = lstm_out.detach()
        return self.contribution_predictor(lstm_out)

    # ---- evaluation of stored actions (differentiable; the PPO update) ----------------------------------
    def evaluate_actions(
        self,
        states: Tensor,
        blueprint_indices: Tensor,
        actions: dict[str, Tensor],
        slot_mask: Tensor | None = None,
        blueprint_mask: Tensor | None = None,
        style_mask: Tensor | None = None,
        tempo_mask: Tensor | None = None,
        alpha_target_mask: Tensor | None = None,
        alpha_speed_mask: Tensor | None = None,
        alpha_curve_mask: Tensor | None = None,
        op_mask: Tensor | None = None,
        hidden: Hidden | None = None,
        probability_floor: dict[str, float] | None = None,
        aux_stop_gradient: bool = True,
    ) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor], Hidden, Tensor, Tensor]:
        """HEAD's evaluate_actions: ``(log_probs, V(s), normalised entropy, hidden, contributions, Q(s, op))``.

        Inputs ``[B, T, ...]``; masks ``[B, T, n]`` (or ``[B, n]``, broadcast over T). Each head is scored
        on its effective mask given the STORED op (the canonicalisation of get_action; slot: WAIT -> first
        valid slot), with the probability floor, in FP32 (-1e4 masking). V(s) has full gradient; Q(s, op)
        trains only q_head (detached input); contributions detach the trunk when ``aux_stop_gradient``.
        An empty effective mask raises ``invalid_state_error`` even with validation off (one sync).
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
        lstm_out, new_hidden = self.trunk(states, blueprint_indices, hidden)
        aux_in = lstm_out.detach() if aux_stop_gradient else lstm_out
        pred_contributions = self.contribution_predictor(aux_in)
        logits = self.head_logits(lstm_out)
        value = self._compute_state_value(lstm_out)
        q_value = self._compute_q(lstm_out, actions["op"])
        B, T = states.shape[:2]
        op_flat = actions["op"].reshape(-1)
        floors = probability_floor or {}
        log_probs, entropy, nonempty = {}, {}, []
        validating = self._validating()
        for head in HEAD_NAMES:
            n = logits[head].shape[-1]
            lf = logits[head].float().reshape(B * T, n)  # FP32 seam
            mask = masks[head]
            if mask is not None:
                mask = (mask.unsqueeze(1) if mask.dim() == 2 else mask).expand(B, T, n).reshape(B * T, n)
            if head == "op":
                valid = torch.ones_like(lf, dtype=torch.bool) if mask is None else mask
            else:
                valid = effective_mask(head, op_flat.clamp(min=0), mask, n)
            lp, ent = score_head(lf, valid, float(floors.get(head) or 0.0), actions[head].reshape(-1))
            log_probs[head], entropy[head] = lp.view(B, T), ent.view(B, T)
            nonempty.append(valid.any(-1).all())
            if validating:
                self._validate({head: lf}, {head: valid})
        if not validating and not bool(torch.stack(nonempty).all()):
            raise self.invalid_state_error(
                "evaluate_actions: an action head has no valid actions post-canonicalization (empty mask) "
                "with validation off. No valid actions available; likely a Kasmina state-machine bug."
            )
        return log_probs, value, entropy, new_hidden, pred_contributions, q_value


def score_head(logits: Tensor, valid: Tensor, floor: float, action: Tensor) -> tuple[Tensor, Tensor]:
    """Differentiable FP32 ``(log pi(action), entropy / log #valid)`` of one head, HEAD's seam.

    ``logits [N, n]`` (any float), ``valid [N, n]`` bool, ``action [N]``. Masked entries are -1e4 (so
    gradients stay finite), the floor is applied when ``floor > 0``.
    """
    masked = logits.float().masked_fill(~valid, MASKED_LOGIT_VALUE)
    if floor > 0:
        masked = apply_probability_floor(masked, valid, floor).masked_fill(~valid, MASKED_LOGIT_VALUE)
    logp = torch.log_softmax(masked, dim=-1)
    log_prob = logp.gather(-1, action.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    raw = -(logp.exp() * logp * valid).sum(-1)
    n_valid = valid.sum(-1).clamp(min=1)
    max_ent = torch.where(n_valid > 1, torch.log(n_valid.float()), torch.ones_like(raw))
    return log_prob, torch.where(n_valid == 1, torch.zeros_like(raw), raw / max_ent.clamp(min=1e-8))


class FactoredNetworkV2(NetworkV2Mixin, nn.Module):
    """esper HEAD's ``FactoredRecurrentActorCritic`` modules and init (see the module doc).

    Args (HEAD's constructor, positional order): ``state_dim``, ``feature_dim=512``,
    ``lstm_hidden_dim=512``, ``lstm_layers=1``, ``slot_config`` (HEAD's SlotConfig, an int number of
    slots, or None = 3 slots). Head sizes come from the slot count (HEAD's leyline). HEAD's class
    requires ``state_dim``; here ``None`` (the default) is HEAD's observation size for the slot count,
    ``get_obs_v3_size(S)`` = 23 + 31 S (116 for 3 slots), which is what esper HEAD's ``LSTMPolicyBundle``
    passes by default (``feature_dim=None`` -> ``get_feature_size(slot_config)``), so
    ``FactoredNetworkV2()`` has the layout of esper HEAD's default network (``state_dim`` 116,
    ``feature_net.0`` input 128).
    """

    def __init__(
        self,
        state_dim: int | None = None,
        feature_dim: int = DEFAULT_FEATURE_DIM,
        lstm_hidden_dim: int = DEFAULT_LSTM_HIDDEN_DIM,
        lstm_layers: int = 1,
        slot_config: object = None,
    ) -> None:
        super().__init__()
        sizes = get_action_head_sizes(slot_count(slot_config))
        if state_dim is None:  # esper HEAD's bundle default: get_feature_size(slot_config)
            state_dim = get_obs_v3_size(sizes["slot"])
        for name, value in [
            ("state_dim", state_dim),
            ("feature_dim", feature_dim),
            ("lstm_hidden_dim", lstm_hidden_dim),
            ("lstm_layers", lstm_layers),
            ("number of slots", sizes["slot"]),
        ]:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if lstm_hidden_dim % 8:
            raise ValueError(
                f"lstm_hidden_dim must be a multiple of 8 (heads use H/2, H/4, H/8), got {lstm_hidden_dim}"
            )
        self.head_sizes = sizes
        self.state_dim = state_dim
        self.num_slots, self.num_blueprints, self.num_styles = sizes["slot"], sizes["blueprint"], sizes["style"]
        self.num_tempo, self.num_alpha_targets = sizes["tempo"], sizes["alpha_target"]
        self.num_alpha_speeds, self.num_alpha_curves, self.num_ops = (
            sizes["alpha_speed"],
            sizes["alpha_curve"],
            sizes["op"],
        )
        self.lstm_hidden_dim, self.lstm_layers = lstm_hidden_dim, lstm_layers
        H, half = lstm_hidden_dim, lstm_hidden_dim // 2
        embed = self.num_slots * DEFAULT_BLUEPRINT_EMBED_DIM
        # registration order = HEAD's (state_dict order and RNG consumption order)
        self.feature_net = nn.Sequential(
            nn.Linear(state_dim + embed, feature_dim), nn.LayerNorm(feature_dim), nn.ReLU()
        )
        self.lstm = ResidualLSTM(feature_dim, H, lstm_layers)
        self.lstm_ln = nn.Identity()
        for head in SMALL_HEADS:
            self.add_module(f"{head}_head", _mlp_head(H, half, sizes[head]))
        self.blueprint_embedding = BlueprintEmbeddingV2(self.num_blueprints, DEFAULT_BLUEPRINT_EMBED_DIM)
        self._blueprint_embed_total_dim = embed
        self.blueprint_head = nn.Sequential(
            nn.Linear(H, H), nn.ReLU(), nn.Linear(H, half), nn.ReLU(), nn.Linear(half, sizes["blueprint"])
        )
        self.state_value_head = _deep_value_head(H, half)
        self.q_head = _deep_value_head(H + self.num_ops, half)
        self.contribution_predictor = nn.Sequential(
            nn.Linear(H, half),
            nn.LayerNorm(half),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(half, half // 2),
            nn.ReLU(),
            nn.Linear(half // 2, self.num_slots),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """HEAD's scheme: every Linear orthogonal(sqrt 2) + zero bias; policy outputs gain 0.01; V, Q and
        contribution outputs gain 0.1 (contribution bias zero); the LSTM keeps ResidualLSTM's init."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.orthogonal_(module.weight, gain=math.sqrt(2))
                nn.init.zeros_(module.bias)
        for head in ("slot", "blueprint", "style", "tempo", "alpha_target", "alpha_speed", "alpha_curve", "op"):
            nn.init.orthogonal_(self.head_module(head)[-1].weight.data, gain=0.01)
        for value_like in (self.state_value_head, self.q_head):
            nn.init.orthogonal_(value_like[-1].weight.data, gain=0.1)
        nn.init.orthogonal_(self.contribution_predictor[-1].weight.data, gain=0.1)
        nn.init.zeros_(self.contribution_predictor[-1].bias.data)


def _deep_value_head(inp: int, half: int) -> nn.Sequential:
    """in -> half LN ReLU -> half/2 LN ReLU -> half/4 ReLU -> 1 (HEAD's state_value_head / q_head)."""
    return nn.Sequential(
        nn.Linear(inp, half),
        nn.LayerNorm(half),
        nn.ReLU(),
        nn.Linear(half, half // 2),
        nn.LayerNorm(half // 2),
        nn.ReLU(),
        nn.Linear(half // 2, half // 4),
        nn.ReLU(),
        nn.Linear(half // 4, 1),
    )
