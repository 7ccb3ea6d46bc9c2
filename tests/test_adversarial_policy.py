"""Hostile and careless inputs to FactoredPolicy (issue 15): each case gets a clear error or the right
answer, never action -1 / NaN in silence, and the same behaviour on both sides of the explicit-cell
LSTM threshold (batch <= 128 on CPU runs explicit cells, larger batches nn.LSTM)."""

from __future__ import annotations

import copy

import pytest
import torch

from esper_fast import FactoredPolicy
from esper_fast.constants import HEAD_NAMES, LifecycleOp

STATE_DIM = 20
BATCHES = [1, 4, 200]  # 200 > 128: the nn.LSTM path of get_action on CPU


def policy(seed: int = 0, **kw) -> FactoredPolicy:
    torch.manual_seed(seed)
    return FactoredPolicy(STATE_DIM, feature_dim=16, lstm_hidden_dim=16, backend="cpu", **kw)


def inputs(B: int, seed: int = 0, T: int | None = None):
    g = torch.Generator().manual_seed(seed)
    lead = (B,) if T is None else (B, T)
    return torch.randn(*lead, STATE_DIM, generator=g), torch.randint(-1, 13, (*lead, 3), generator=g)


# ---- item 1: a diverged network must not pass validation -----------------------------------------
@pytest.mark.parametrize("B", BATCHES)
def test_nan_weights_raise_under_validation(B):
    p = policy()
    with torch.no_grad():
        p.op_head[2].weight.fill_(float("nan"))
    s, bp = inputs(B)
    with pytest.raises(ValueError, match="inf/nan"):
        p.get_action(s, bp)
    with pytest.raises(ValueError, match="inf/nan"):
        p.forward(s.unsqueeze(1), bp.unsqueeze(1))
    actions = {h: torch.zeros(B, 1, dtype=torch.int64) for h in HEAD_NAMES}
    with pytest.raises(ValueError, match="inf/nan"):
        p.evaluate_actions(s.unsqueeze(1), bp.unsqueeze(1), actions)


def test_nan_observation_at_batch_one_raises():
    p = policy()
    s, bp = inputs(1)
    s[0, 3] = float("nan")
    with pytest.raises(ValueError, match="inf/nan"):
        p.get_action(s, bp)


def test_validation_fast_path_is_one_check_on_healthy_inputs(monkeypatch):
    """Healthy logits take the one-sync path: each head's logits are checked once, not again per head."""
    import esper_fast.network as network

    calls = []
    real = torch.isfinite
    monkeypatch.setattr(network.torch, "isfinite", lambda t: calls.append(1) or real(t))
    logits = {"op": torch.randn(5, 6), "slot": torch.randn(5, 3)}
    network.validate_masks_and_logits(logits, {"op": torch.ones(5, 6, dtype=torch.bool), "slot": None})
    assert len(calls) == len(logits)


# ---- item 2: weights changed legally are the weights used ----------------------------------------
def _same_actions_and_log_probs(a, b):
    for h in HEAD_NAMES:
        assert torch.equal(a.actions[h], b.actions[h]), h
        torch.testing.assert_close(a.log_probs[h], b.log_probs[h], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("B", BATCHES)
def test_load_state_dict_assign_reaches_every_lstm_path(B):
    old, new = policy(seed=0), policy(seed=1)
    s, bp = inputs(B)
    want = new.get_action(s, bp, deterministic=True)
    old.load_state_dict(copy.deepcopy(new.state_dict()), assign=True)
    _same_actions_and_log_probs(old.get_action(s, bp, deterministic=True), want)


@pytest.mark.parametrize("B", BATCHES)
def test_weights_written_through_data_are_used(B):
    target, online = policy(seed=0), policy(seed=1)
    s, bp = inputs(B)
    target.get_action(s, bp, deterministic=True)  # warm any cache on the old weights
    for pt, po in zip(target.parameters(), online.parameters()):
        pt.data.copy_(po.data)  # the target-network idiom: bumps no version counter
    _same_actions_and_log_probs(
        target.get_action(s, bp, deterministic=True), online.get_action(s, bp, deterministic=True)
    )


def test_fused_action_heads_read_weights_written_through_data():
    p = policy()
    x = torch.randn(5, 16)
    p.fused_action_heads(x)
    p.op_head[2].bias.data.add_(1.0)
    torch.testing.assert_close(p.fused_action_heads(x)[0]["op"], p.op_head(x), atol=1e-6, rtol=1e-5)
    logits, q = p.fused_action_heads(x)
    for h in HEAD_NAMES:
        torch.testing.assert_close(logits[h], p.head_module(h)(x), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(q, p.q_values(x), atol=1e-6, rtol=1e-5)


# ---- item 3: hidden of the wrong shape is refused, whatever the batch size -------------------------
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("shape", ["BH", "11H", "2BH"])
def test_hidden_of_the_wrong_shape_raises(B, shape):
    p = policy()
    s, bp = inputs(B)
    shapes = {"BH": (B, 16), "11H": (1, 1, 16) if B > 1 else (1, 2, 16), "2BH": (2, B, 16)}  # 11H: broadcastable
    h = torch.zeros(shapes[shape])
    with pytest.raises(ValueError, match=rf"hidden h must have shape \[1, {B}, 16\]"):
        p.get_action(s, bp, hidden=(h, h.clone()))
    with pytest.raises(ValueError, match="hidden h must have shape"):
        p.forward(s.unsqueeze(1), bp.unsqueeze(1), hidden=(h, h.clone()))


def test_hidden_type_dtype_device():
    p = policy()
    s, bp = inputs(4)
    with pytest.raises(TypeError, match="hidden must be a tuple"):
        p.get_action(s, bp, hidden=torch.zeros(1, 4, 16))
    with pytest.raises(TypeError, match="hidden h must have the network's dtype"):
        p.get_action(s, bp, hidden=(torch.zeros(1, 4, 16, dtype=torch.float64), torch.zeros(1, 4, 16)))
    h = p.get_initial_hidden(4)
    assert p.get_action(s, bp, hidden=h).hidden[0].shape == (1, 4, 16)


# ---- item 8: inputs that gave errors naming no argument ---------------------------------------------
def test_state_type_dtype_and_empty_batch():
    p = policy()
    s, bp = inputs(4)
    with pytest.raises(TypeError, match="state must be a torch.Tensor, got ndarray"):
        p.get_action(s.numpy(), bp)
    with pytest.raises(TypeError, match="state must have the network's dtype torch.float32, got torch.float64"):
        p.get_action(s.double(), bp)
    with pytest.raises(ValueError, match=r"state must have at least one row \(B >= 1\)"):
        p.get_action(s[:0], bp[:0])
    with pytest.raises(ValueError, match=r"state must have at least one row"):
        p.forward(s[:0].unsqueeze(1), bp[:0].unsqueeze(1))


def test_half_policy_runs_with_its_own_initial_hidden():
    p = policy().half()
    s, bp = inputs(4)
    h = p.get_initial_hidden(4)
    assert h[0].dtype == torch.float16
    res = p.get_action(s.half(), bp)
    assert (res.actions["op"] >= 0).all() and res.hidden[0].dtype == torch.float16


@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("value", [13, 14, 1000])
def test_blueprint_index_out_of_range_is_named(B, value):
    p = policy()
    s, bp = inputs(B)
    bp[0, 1] = value
    with pytest.raises(ValueError, match=rf"blueprint_indices must be < 13; got \[{value}\]"):
        p.get_action(s, bp)
    with pytest.raises(ValueError, match="blueprint_indices must be < 13"):
        p.forward(s.unsqueeze(1), bp.unsqueeze(1))
    actions = {h: torch.zeros(B, 1, dtype=torch.int64) for h in HEAD_NAMES}
    with pytest.raises(ValueError, match="blueprint_indices must be < 13"):
        p.evaluate_actions(s.unsqueeze(1), bp.unsqueeze(1), actions)


def test_blueprint_index_out_of_range_without_validation_is_a_bad_row():
    p = policy()
    p.validate = False
    s, bp = inputs(4)
    bp[2, 0] = 14
    res = p.get_action(s, bp)
    assert res.actions["op"][2] == -1 and (res.actions["op"][[0, 1, 3]] >= 0).all()


@pytest.mark.parametrize("value", [-1, 6, 99])
def test_evaluate_actions_out_of_range_action_is_named(value):
    p = policy()
    s, bp = inputs(3, T=2)
    actions = {h: torch.zeros(3, 2, dtype=torch.int64) for h in HEAD_NAMES}
    actions["op"][1, 1] = value
    with pytest.raises(
        ValueError, match=rf"actions\['op'\] must be in \[0, 6\); got \[{value}\] at \(flattened\) positions \[3\]"
    ):
        p.evaluate_actions(s, bp, actions)
    with pytest.raises(TypeError, match=r"actions\['op'\] must be an int64 tensor"):
        p.evaluate_actions(s, bp, {**actions, "op": actions["op"].int()})
    with pytest.raises(ValueError, match=r"actions must have every head"):
        p.evaluate_actions(s, bp, {h: a for h, a in actions.items() if h != "tempo"})


# ---- item 7: get_action under validation when slot_by_op leaves no slot for the chosen op ----------
@pytest.mark.parametrize("B", BATCHES)
def test_slot_by_op_leaving_no_slot_raises_under_validation(B):
    p = policy()
    s, bp = inputs(B)
    op_mask = torch.zeros(B, 6, dtype=torch.bool)
    op_mask[:, LifecycleOp.GERMINATE] = True
    sbo = torch.ones(B, 6, 3, dtype=torch.bool)
    sbo[-1, LifecycleOp.GERMINATE] = False  # the last row's op has no slot
    with pytest.raises(Exception, match="No valid actions available for head 'slot'"):
        p.get_action(s, bp, op_mask=op_mask, slot_by_op=sbo)
