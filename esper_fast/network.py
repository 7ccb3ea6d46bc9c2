"""esper's recurrent actor-critic network: modules, init, trunk, heads, Q(s, .) and evaluation.

Everything here is plain, differentiable torch. The module names, registration order, shapes, the
``blueprint_embedding._null_idx`` buffer and the init scheme are esper's ``FactoredRecurrentActorCritic``
at commit 0872525b (esper-lite's ``tamiyo`` network at that commit), so state_dicts load strictly both ways.
How an action is *chosen* lives in the subclasses: :class:`esper_fast.FactoredPolicy` (fused kernel)
and :class:`esper_fast.ReferencePolicy` (esper's torch ops, optionally with the legacy bug).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper_fast.constants import (
    DEFAULT_BLUEPRINT_EMBED_DIM,
    DEFAULT_FEATURE_DIM,
    DEFAULT_LSTM_HIDDEN_DIM,
    HEAD_NAMES,
    get_action_head_sizes,
)
from esper_fast.errors import KASMINA_HINT, InvalidStateMachineError
from esper_fast.ops.checks import raise_for_bad_head
from esper_fast.types import Hidden

__all__ = [
    "BlueprintEmbedding",
    "FactoredNetwork",
    "HeadOutputs",
    "mask_dict",
    "validate_masks_and_logits",
]

# esper's registration order of the seven small heads (between lstm_ln and blueprint_embedding).
SMALL_HEADS = ("slot", "style", "tempo", "alpha_target", "alpha_speed", "alpha_curve", "op")


class BlueprintEmbedding(nn.Module):
    """Per-slot blueprint embedding; index -1 (empty slot) maps to a learned null row."""

    def __init__(self, num_blueprints: int = 13, embed_dim: int = DEFAULT_BLUEPRINT_EMBED_DIM) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_blueprints + 1, embed_dim)
        self.register_buffer("_null_idx", torch.tensor(num_blueprints, dtype=torch.int64))
        nn.init.normal_(self.embedding.weight, mean=0.0, std=0.02)

    def forward(self, blueprint_indices: Tensor) -> Tensor:
        """``[..., S]`` int64 (values 0..12 or < 0 for empty) -> ``[..., S, embed_dim]``.

        An index >= num_blueprints gives NaN features (no sync, no out-of-range gather), so the row's
        logits are NaN: validation names ``blueprint_indices``; without it the row is a bad row.
        """
        too_big = blueprint_indices >= self._null_idx
        idx = torch.where((blueprint_indices < 0) | too_big, self._null_idx, blueprint_indices)
        return self.embedding(idx).masked_fill(too_big.unsqueeze(-1), float("nan"))


class HeadOutputs(NamedTuple):
    """Unmasked outputs of every head for ``[B, T]`` inputs."""

    logits: dict[str, Tensor]  # head -> [B, T, n_head], HEAD_NAMES order
    q_values: Tensor  # [B, T, num_ops]: Q(s, a) for every op a
    lstm_out: Tensor  # [B, T, H] post-LayerNorm
    hidden: Hidden  # (h, c), each [L, B, H]


def mask_dict(*masks: Tensor | None) -> dict[str, Tensor | None]:
    """esper's eight per-head mask arguments (HEAD_NAMES order) as ``{head: mask}``."""
    return dict(zip(HEAD_NAMES, masks))


def _mlp_head(hidden: int, width: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, width), nn.ReLU(), nn.Linear(width, out))


def validate_masks_and_logits(
    logits: dict[str, Tensor],
    masks: dict[str, Tensor | None],
    where: str = "",
    *,
    indices: dict[str, tuple[Tensor, int | None, int]] | None = None,
) -> None:
    """esper's validation, folded into ONE host sync on the happy path.

    Raises :class:`InvalidStateMachineError` ("No valid actions available ...") for a mask row with no
    valid entry and ``ValueError`` for inf/nan logits, naming the head and the first rows.
    ``indices`` (name -> (int tensor, low or None, high)) adds range checks ``low <= t < high`` to the
    same sync (blueprint indices, stored actions); a value out of range raises ``ValueError`` naming it
    (checked first: an out-of-range blueprint index is what makes its row's logits NaN).
    """
    indices = indices or {}
    checks = [torch.isfinite(l).all() for l in logits.values()]
    checks += [m.any(-1).all() for m in masks.values() if m is not None]
    checks += [_in_range(t, lo, hi).all() for t, lo, hi in indices.values()]
    if bool(torch.stack(checks).all()):
        return
    for name, (t, lo, hi) in indices.items():
        ok = _in_range(t, lo, hi)
        if not bool(ok.all()):
            pos = torch.nonzero(~ok.reshape(-1)).flatten()[:8]
            expected = f"< {hi}" if lo is None else f"in [{lo}, {hi})"
            raise ValueError(
                f"{name} must be {expected}; got {t.reshape(-1)[pos].tolist()} at (flattened) positions {pos.tolist()}"
            )
    for head, mask in masks.items():
        if mask is not None:
            raise_for_bad_head(head, None, mask, empty_error=InvalidStateMachineError, where=where, hint=KASMINA_HINT)
    for head, l in logits.items():
        raise_for_bad_head(
            head,
            l,
            None,
            check_empty=False,
            valid_only=False,
            nonfinite_hint="This indicates network instability (or a non-finite state / weight).",
        )


def _in_range(t: Tensor, lo: int | None, hi: int) -> Tensor:
    return t < hi if lo is None else (t >= lo) & (t < hi)


class FactoredNetwork(nn.Module):
    """esper's module layout and trunk; subclasses decide how actions are selected.

    Args mirror esper's ``FactoredRecurrentActorCritic``; ``None`` head sizes take esper's defaults.
    (esper sizes the blueprint embedding and the value head's one-hot from its global constants; here
    they follow ``num_blueprints`` / ``num_ops``, which is identical for the defaults.)

    ``validate`` turns the empty-mask and non-finite-logit checks on or off; with it off nothing on the
    action path syncs with the host. It is an instance setting: the ``validate=`` constructor keyword
    (or ``policy.validate = False``) stores it on the instance; an instance without its own setting
    follows the class flag at call time, so ``FactoredPolicy.validate = False`` (the class-level
    switch of earlier versions, like esper's ``MaskedCategorical.validate``) keeps working for every
    instance constructed without the keyword. ``slot_config`` is esper's last constructor argument:
    any object with ``num_slots`` (esper's ``SlotConfig``); it sizes the slot head when ``num_slots``
    is None, as in esper.
    """

    validate: ClassVar[bool] = True
    # evaluate_actions through esper_fast.fused_evaluate (stacked-GEMM heads, Q only at the stored op,
    # the fused scoring op); False = esper's per-head path (heads + score_actions). Same parameters.
    fused_evaluate: ClassVar[bool] = True

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
        feature_dim: int = DEFAULT_FEATURE_DIM,
        lstm_hidden_dim: int = DEFAULT_LSTM_HIDDEN_DIM,
        lstm_layers: int = 1,
        slot_config: Any | None = None,
        *,
        validate: bool | None = None,
    ) -> None:
        super().__init__()
        if validate is not None:
            self.validate = bool(validate)
        if num_slots is None and slot_config is not None:
            if not isinstance(getattr(slot_config, "num_slots", None), int):
                raise TypeError(f"slot_config must have an int num_slots (esper's SlotConfig), got {slot_config!r}")
            num_slots = slot_config.num_slots
        defaults = get_action_head_sizes(3 if num_slots is None else num_slots)
        given = {
            "blueprint": num_blueprints,
            "style": num_styles,
            "tempo": num_tempo,
            "alpha_target": num_alpha_targets,
            "alpha_speed": num_alpha_speeds,
            "alpha_curve": num_alpha_curves,
            "op": num_ops,
        }
        sizes = {h: (defaults[h] if given.get(h) is None else int(given[h])) for h in HEAD_NAMES}
        for name, value in [
            ("state_dim", state_dim),
            ("feature_dim", feature_dim),
            ("lstm_hidden_dim", lstm_hidden_dim),
            ("lstm_layers", lstm_layers),
            *((f"size of head {h!r}", n) for h, n in sizes.items()),
        ]:
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if lstm_hidden_dim % 2:
            raise ValueError(f"lstm_hidden_dim must be even (heads use H/2), got {lstm_hidden_dim}")
        self.head_sizes = sizes
        self.state_dim, self.num_slots = state_dim, sizes["slot"]
        self.num_blueprints, self.num_styles, self.num_tempo = sizes["blueprint"], sizes["style"], sizes["tempo"]
        self.num_alpha_targets, self.num_alpha_speeds = sizes["alpha_target"], sizes["alpha_speed"]
        self.num_alpha_curves, self.num_ops = sizes["alpha_curve"], sizes["op"]
        self.lstm_hidden_dim, self.lstm_layers = lstm_hidden_dim, lstm_layers
        self._blueprint_embed_total_dim = self.num_slots * DEFAULT_BLUEPRINT_EMBED_DIM
        H, half = lstm_hidden_dim, lstm_hidden_dim // 2

        self.feature_net = nn.Sequential(
            nn.Linear(state_dim + self._blueprint_embed_total_dim, feature_dim),
            nn.LayerNorm(feature_dim),
            nn.ReLU(),
        )
        self.lstm = nn.LSTM(feature_dim, H, num_layers=lstm_layers, batch_first=True)
        self.lstm_ln = nn.LayerNorm(H)
        for head in SMALL_HEADS:
            self.add_module(f"{head}_head", _mlp_head(H, half, sizes[head]))
        self.blueprint_embedding = BlueprintEmbedding(self.num_blueprints, DEFAULT_BLUEPRINT_EMBED_DIM)
        self.blueprint_head = nn.Sequential(
            nn.Linear(H, H), nn.ReLU(), nn.Linear(H, half), nn.ReLU(), nn.Linear(half, sizes["blueprint"])
        )
        self.value_head = _mlp_head(H + self.num_ops, half, 1)
        self._init_weights()
        self._refresh_lstm_weights()

    def _refresh_lstm_weights(self) -> None:
        """Plain (unregistered) references to the LSTM parameters: dynamo can read these, not nn.LSTM."""
        p = self.lstm._parameters
        refs = [
            tuple(p[f"{n}_l{k}"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            for k in range(self.lstm_layers)
        ]
        object.__setattr__(self, "_lstm_weights", refs)

    def _sync_lstm_weights(self) -> None:
        """Refreshes the references if nn.LSTM's parameters were replaced (e.g. ``load_state_dict(sd,
        assign=True)`` or an assignment to ``lstm.weight_ih_l0``), which ``_apply`` does not see."""
        flat = self.lstm._flat_weights
        refs = [t for layer in self._lstm_weights for t in layer]
        if len(flat) != len(refs) or any(a is not b for a, b in zip(flat, refs)):
            self._refresh_lstm_weights()

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda() / .half() may replace parameters
        out = super()._apply(fn, *args, **kwargs)
        self._refresh_lstm_weights()
        return out

    # ---- init (esper's scheme) --------------------------------------------------------------
    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.orthogonal_(module.weight, gain=math.sqrt(2))
                nn.init.zeros_(module.bias)
        for head in HEAD_NAMES:
            nn.init.orthogonal_(self.head_module(head)[-1].weight, gain=0.01)
        nn.init.orthogonal_(self.value_head[-1].weight, gain=1.0)
        H = self.lstm_hidden_dim
        for name, param in self.lstm.named_parameters():
            if name.startswith("weight_"):
                nn.init.orthogonal_(param, gain=1.0)
            else:  # bias_ih / bias_hh: zero, forget gate (i, f, g, o order) = 1 in both
                with torch.no_grad():
                    param.zero_()
                    param[H : 2 * H] = 1.0

    def head_module(self, head: str) -> nn.Sequential:
        return getattr(self, f"{head}_head")

    # ---- trunk and heads -----------------------------------------------------------------------
    def get_initial_hidden(self, batch_size: int, device: torch.device | str | None = None) -> Hidden:
        """Zero LSTM state ``(h, c)``, each ``[L, batch_size, H]``, in the parameters' dtype."""
        shape = (self.lstm_layers, batch_size, self.lstm_hidden_dim)
        dtype = self.lstm_ln.weight.dtype
        return torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)

    def check_trunk_inputs(self, state: object, blueprint_indices: object, hidden: object = None) -> None:
        """Types, dtypes, batch size and ``hidden``'s shape, each error naming the argument (no sync).

        ``hidden`` must be ``(h, c)``, each exactly ``[lstm_layers, B, lstm_hidden_dim]``: nothing is
        broadcast, whichever LSTM path (explicit cells or nn.LSTM) the batch size selects.
        """
        for name, t in (("state", state), ("blueprint_indices", blueprint_indices)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__} (convert with torch.as_tensor)")
        dtype = self.lstm_ln.weight.dtype
        if state.dtype != dtype:
            raise TypeError(f"state must have the network's dtype {dtype}, got {state.dtype}")
        if state.dim() >= 2 and state.shape[0] == 0:
            raise ValueError(f"state must have at least one row (B >= 1), got shape {list(state.shape)}")
        if blueprint_indices.device != state.device:
            raise ValueError(f"blueprint_indices is on {blueprint_indices.device} but state is on {state.device}")
        if hidden is None:
            return
        if not (isinstance(hidden, (tuple, list)) and len(hidden) == 2 and all(isinstance(t, Tensor) for t in hidden)):
            raise TypeError(f"hidden must be a tuple (h, c) of two tensors or None, got {type(hidden).__name__}")
        want = (self.lstm_layers, state.shape[0], self.lstm_hidden_dim)
        for name, t in zip(("h", "c"), hidden):
            if tuple(t.shape) != want:
                raise ValueError(
                    f"hidden {name} must have shape {list(want)} ([lstm_layers, B, lstm_hidden_dim]), "
                    f"got {list(t.shape)}"
                )
            # under autocast (the update's --amp) the carried state is in the autocast dtype
            if t.dtype != dtype and not torch.is_autocast_enabled(state.device.type):
                raise TypeError(f"hidden {name} must have the network's dtype {dtype}, got {t.dtype}")
            if t.device != state.device:
                raise ValueError(f"hidden {name} is on {t.device} but state is on {state.device}")

    def trunk(
        self, state: Tensor, blueprint_indices: Tensor, hidden: Hidden | None, explicit_cells: bool = False
    ) -> tuple[Tensor, Hidden]:
        """``state [B,T,D]``, ``blueprint_indices [B,T,S]`` -> (lstm_out ``[B,T,H]`` post-LN, new hidden).

        ``explicit_cells`` runs the LSTM as explicit cells (:meth:`_lstm_unrolled`, same parameters
        and math) instead of ``nn.LSTM``; always so under torch.compile, which cannot trace nn.LSTM.
        """
        self.check_trunk_inputs(state, blueprint_indices, hidden)
        if hidden is None:
            hidden = self.get_initial_hidden(state.shape[0], state.device)
        bp = self.blueprint_embedding(blueprint_indices).flatten(-2)  # [B, T, 4S]
        features = self.feature_net(torch.cat([state, bp.to(state.dtype)], dim=-1))
        if explicit_cells or torch.compiler.is_compiling():
            lstm_out, new_hidden = self._lstm_unrolled(features, hidden)
        else:
            lstm_out, new_hidden = self.lstm(features, hidden)
        return self.lstm_ln(lstm_out), new_hidden

    def _lstm_unrolled(self, x: Tensor, hidden: Hidden) -> tuple[Tensor, Hidden]:
        """``self.lstm`` written as explicit cells (gate order i, f, g, o).

        For torch.compile, and for single steps on CPU: oneDNN's LSTM re-packs its weights on every
        call (8.4 ms vs 0.43 ms per step at batch 1, H = 512, one thread on this project's CPU).
        """
        if not torch.compiler.is_compiling():
            self._sync_lstm_weights()
        h_all, c_all = hidden
        hs, cs = [], []
        for layer in range(self.lstm_layers):
            w_ih, w_hh, b_ih, b_hh = self._lstm_weights[layer]
            bias = b_ih + b_hh
            x_proj = F.linear(x, w_ih, bias)  # [B, T, 4H]
            h, c = h_all[layer], c_all[layer]
            outs = []
            for t in range(x.shape[1]):
                i, f, g, o = (x_proj[:, t] + F.linear(h, w_hh)).chunk(4, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outs.append(h)
            x = torch.stack(outs, dim=1)
            hs.append(h)
            cs.append(c)
        return x, (torch.stack(hs), torch.stack(cs))

    def q_values(self, lstm_out: Tensor) -> Tensor:
        """Q(s, a) for every op a at once: ``[..., H]`` -> ``[..., num_ops]``.

        Splits value_head's first Linear ``W = [W_s | W_op]``: ``W [x; onehot(a)] + b = W_s x + b +
        W_op[:, a]``, so one matmul serves all ops with esper's exact parameters.
        """
        first, last = self.value_head[0], self.value_head[2]
        H = lstm_out.shape[-1]
        state_part = F.linear(lstm_out, first.weight[:, :H], first.bias)  # [..., H/2]
        pre = state_part.unsqueeze(-2) + first.weight[:, H:].t()  # [..., num_ops, H/2]
        return F.linear(torch.relu(pre), last.weight, last.bias).squeeze(-1)

    def _compute_value(self, lstm_out: Tensor, op: Tensor) -> Tensor:
        """esper's helper: ``value_head(cat([lstm_out, one_hot(op)]))`` -> Q(s, op), shape of ``op``."""
        one_hot = F.one_hot(op, self.num_ops).to(lstm_out.dtype)
        return self.value_head(torch.cat([lstm_out, one_hot], dim=-1)).squeeze(-1)

    def heads(self, state: Tensor, blueprint_indices: Tensor, hidden: Hidden | None) -> HeadOutputs:
        """Trunk plus every head's raw logits and Q(s, .) for ``[B, T, ...]`` inputs."""
        lstm_out, new_hidden = self.trunk(state, blueprint_indices, hidden)
        logits = {h: self.head_module(h)(lstm_out) for h in HEAD_NAMES}
        return HeadOutputs(logits, self.q_values(lstm_out), lstm_out, new_hidden)

    # ---- the inference fast path: every head in four GEMMs -------------------------------------------
    def _fused_head_weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(W1, b1, W2, b2): the first Linear of the 7 small heads, blueprint_head and value_head's state
        part stacked, and the 7 small heads' output Linears as one block-diagonal matrix.

        Built from the live parameters on every call (no cache): a cache keyed on version counters
        goes stale when weights are written through ``p.data`` (target networks, soft updates, some
        loaders), which bumps no counter. Under torch.compile and CUDA-graph capture the
        concatenation is part of the graph either way.
        """
        H = self.lstm_hidden_dim
        first = [self.head_module(h)[0] for h in SMALL_HEADS]
        w1 = torch.cat([m.weight for m in first] + [self.blueprint_head[0].weight, self.value_head[0].weight[:, :H]])
        b1 = torch.cat([m.bias for m in first] + [self.blueprint_head[0].bias, self.value_head[0].bias])
        w2 = torch.block_diag(*[self.head_module(h)[2].weight for h in SMALL_HEADS])
        b2 = torch.cat([self.head_module(h)[2].bias for h in SMALL_HEADS])
        return w1, b1, w2, b2

    def action_heads(self, lstm_out: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Every head's logits and Q(s, .) for ``lstm_out [N, H]`` (inference path).

        Eager CPU runs the head modules themselves (as fast as the fused GEMMs there, and no weight
        concatenation to keep fresh); CUDA and torch.compile run :meth:`fused_action_heads`.
        Returns (head -> ``[N, n_head]`` logits; ``q [N, num_ops]``).
        """
        if lstm_out.device.type == "cpu" and not torch.compiler.is_compiling():
            return {h: self.head_module(h)(lstm_out) for h in HEAD_NAMES}, self.q_values(lstm_out)
        return self.fused_action_heads(lstm_out)

    def fused_action_heads(self, lstm_out: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """:meth:`action_heads` in four GEMMs over concatenated weights, rebuilt from the live parameters.

        Same parameters and math as :meth:`heads` (floats differ only by GEMM rounding). Returns
        (head -> ``[N, n_head]`` logits, views into one buffer; ``q [N, num_ops]``).
        """
        w1, b1, w2, b2 = self._fused_head_weights()
        H, half = self.lstm_hidden_dim, self.lstm_hidden_dim // 2
        small = len(SMALL_HEADS) * half
        z = F.linear(lstm_out, w1, b1)  # [N, 7*half + H + half]
        small_logits = F.linear(torch.relu(z[:, :small]), w2, b2)  # [N, sum of small head sizes]
        bp = self.blueprint_head
        bp_logits = bp[4](torch.relu(bp[2](torch.relu(z[:, small : small + H]))))
        pre = z[:, small + H :].unsqueeze(-2) + self.value_head[0].weight[:, H:].t()  # [N, num_ops, half]
        q = F.linear(torch.relu(pre), self.value_head[2].weight, self.value_head[2].bias).squeeze(-1)
        logits, start = {"blueprint": bp_logits}, 0
        for h in SMALL_HEADS:
            logits[h] = small_logits[:, start : start + self.head_sizes[h]]
            start += self.head_sizes[h]
        return {h: logits[h] for h in HEAD_NAMES}, q

    # ---- evaluation of stored actions (differentiable; the PPO update path) ------------------------
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
    ) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor], Hidden]:
        """esper's evaluate_actions: ``(log_probs, value = Q(s, stored op), normalised entropy, hidden)``.

        Inputs are ``[B, T, ...]``; ``actions`` maps head -> ``[B, T]`` int64; masks ``[B, T, n]`` bool.
        The style mask follows the stored op (esper's causal rule). Differentiable everywhere.
        With ``fused_evaluate`` (class or instance flag) the same math runs fused
        (:mod:`esper_fast.fused_evaluate`); log-probs/entropies come back float32 (float64 for a float64
        network) and equal the per-head path up to GEMM rounding.
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
        self.check_actions(actions, tuple(states.shape[:-1]) if isinstance(states, Tensor) else None)
        if self.fused_evaluate:
            from esper_fast.fused_evaluate import evaluate_actions_fused

            return evaluate_actions_fused(self, states, blueprint_indices, actions, masks, hidden)
        out = self.heads(states, blueprint_indices, hidden)
        if self.validate:
            ranges = {f"actions[{h!r}]": (actions[h], 0, self.head_sizes[h]) for h in HEAD_NAMES}
            validate_masks_and_logits(
                out.logits,
                masks,
                indices={"blueprint_indices": (blueprint_indices, None, self.num_blueprints), **ranges},
            )
        log_probs, entropy = self.score_actions(out.logits, masks, actions)
        value = out.q_values.gather(-1, actions["op"].unsqueeze(-1)).squeeze(-1)
        return log_probs, value, entropy, out.hidden

    def check_actions(self, actions: object, lead: tuple[int, ...] | None) -> None:
        """``actions``: head -> int64 tensor shaped like the inputs' leading dims (no sync)."""
        if not isinstance(actions, dict):
            raise TypeError(f"actions must be a dict head -> int64 tensor, got {type(actions).__name__}")
        missing = [h for h in HEAD_NAMES if h not in actions]
        if missing:
            raise ValueError(f"actions must have every head {list(HEAD_NAMES)}; missing {missing}")
        for h in HEAD_NAMES:
            a = actions[h]
            if not isinstance(a, Tensor) or a.dtype != torch.int64:
                what = a.dtype if isinstance(a, Tensor) else type(a).__name__
                raise TypeError(f"actions[{h!r}] must be an int64 tensor, got {what}")
            if lead is not None and tuple(a.shape) != lead:
                raise ValueError(f"actions[{h!r}] must have shape {list(lead)}, got {list(a.shape)}")

    def score_actions(
        self, logits: dict[str, Tensor], masks: dict[str, Tensor | None], actions: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Per-head log-prob of the stored action and normalised entropy, esper's -1e4 masking
        (:func:`esper_fast.ops.score.score_actions_reference` without ``slot_by_op``)."""
        from esper_fast.ops.score import score_actions_reference

        return score_actions_reference(logits, masks, actions)
