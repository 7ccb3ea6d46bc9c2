"""FactoredPolicyV2 (esper HEAD, value-head schema v2): layout, init, get_action / forward / evaluate_actions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from esper_fast import FactoredPolicy, FactoredPolicyV2, InvalidStateMachineError
from esper_fast.constants import HEAD_NAMES, LifecycleOp
from esper_fast.constants_v2 import OBS_V3_NON_BLUEPRINT_DIM, PROBABILITY_FLOOR_PER_HEAD
from esper_fast.reference.actions_v2 import select_actions_v2_reference
from esper_fast.reference.policy_v2 import reference_get_action_v2

D = OBS_V3_NON_BLUEPRINT_DIM  # 116
FLOORS = dict(PROBABILITY_FLOOR_PER_HEAD)
SIZES = {
    "slot": 3,
    "blueprint": 13,
    "style": 4,
    "tempo": 3,
    "alpha_target": 3,
    "alpha_speed": 4,
    "alpha_curve": 5,
    "op": 6,
}

# The 78 state_dict entries of esper-lite HEAD's FactoredRecurrentActorCritic(116) in order, with shapes
# (read from HEAD 2016337e: printed from esper's own class in a separate venv).
HEAD_KEYS = """
feature_net.0.weight 512,128|feature_net.0.bias 512|feature_net.1.weight 512|feature_net.1.bias 512
lstm.layers.0.weight_ih_l0 2048,512|lstm.layers.0.weight_hh_l0 2048,512|lstm.layers.0.bias_ih_l0 2048
lstm.layers.0.bias_hh_l0 2048|lstm.layer_norms.0.weight 512|lstm.layer_norms.0.bias 512
slot_head.0.weight 256,512|slot_head.0.bias 256|slot_head.2.weight 3,256|slot_head.2.bias 3
style_head.0.weight 256,512|style_head.0.bias 256|style_head.2.weight 4,256|style_head.2.bias 4
tempo_head.0.weight 256,512|tempo_head.0.bias 256|tempo_head.2.weight 3,256|tempo_head.2.bias 3
alpha_target_head.0.weight 256,512|alpha_target_head.0.bias 256|alpha_target_head.2.weight 3,256
alpha_target_head.2.bias 3|alpha_speed_head.0.weight 256,512|alpha_speed_head.0.bias 256
alpha_speed_head.2.weight 4,256|alpha_speed_head.2.bias 4|alpha_curve_head.0.weight 256,512
alpha_curve_head.0.bias 256|alpha_curve_head.2.weight 5,256|alpha_curve_head.2.bias 5
op_head.0.weight 256,512|op_head.0.bias 256|op_head.2.weight 6,256|op_head.2.bias 6
blueprint_embedding._null_idx |blueprint_embedding.embedding.weight 14,4
blueprint_head.0.weight 512,512|blueprint_head.0.bias 512|blueprint_head.2.weight 256,512
blueprint_head.2.bias 256|blueprint_head.4.weight 13,256|blueprint_head.4.bias 13
state_value_head.0.weight 256,512|state_value_head.0.bias 256|state_value_head.1.weight 256
state_value_head.1.bias 256|state_value_head.3.weight 128,256|state_value_head.3.bias 128
state_value_head.4.weight 128|state_value_head.4.bias 128|state_value_head.6.weight 64,128
state_value_head.6.bias 64|state_value_head.8.weight 1,64|state_value_head.8.bias 1
q_head.0.weight 256,518|q_head.0.bias 256|q_head.1.weight 256|q_head.1.bias 256|q_head.3.weight 128,256
q_head.3.bias 128|q_head.4.weight 128|q_head.4.bias 128|q_head.6.weight 64,128|q_head.6.bias 64
q_head.8.weight 1,64|q_head.8.bias 1|contribution_predictor.0.weight 256,512|contribution_predictor.0.bias 256
contribution_predictor.1.weight 256|contribution_predictor.1.bias 256|contribution_predictor.4.weight 128,256
contribution_predictor.4.bias 128|contribution_predictor.6.weight 3,128|contribution_predictor.6.bias 3
"""


def head_keys() -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for item in HEAD_KEYS.replace("\n", "|").split("|"):
        if item.strip():
            name, _, shape = item.strip().partition(" ")
            out.append((name, tuple(int(s) for s in shape.split(",")) if shape else ()))
    return out


def small_policy(seed=0, layers=2, scale=0.3) -> FactoredPolicyV2:
    torch.manual_seed(seed)
    p = FactoredPolicyV2(D, 48, 32, layers)
    with torch.no_grad():  # away from the near-uniform init so the heads have preferences
        for prm in p.parameters():
            prm.add_(scale * torch.randn_like(prm))
    return p.eval()


def inputs(B, seed=1, T=None, sbo=False):
    g = torch.Generator().manual_seed(seed)
    lead = (B,) if T is None else (B, T)
    state = torch.randn(*lead, D, generator=g)
    bp = torch.randint(-1, 13, (*lead, 3), generator=g)
    masks = {}
    for h, k in SIZES.items():
        m = torch.rand(*lead, k, generator=g) < 0.6
        m[..., 0] = True
        masks[h] = m
    slot_by_op = None
    if sbo:
        slot_by_op = torch.rand(B, 6, 3, generator=g) < 0.5
        slot_by_op[..., 2] |= ~slot_by_op.any(-1)
    return state, bp, masks, slot_by_op


def mask_kwargs(masks):
    return {f"{h}_mask": m for h, m in masks.items()}


# ---- layout -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_policy() -> FactoredPolicyV2:
    return FactoredPolicyV2(D)


def test_state_dict_keys_and_shapes_are_heads(default_policy):
    sd = default_policy.state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == head_keys()
    assert len(sd) == 78 and sd["blueprint_embedding._null_idx"].item() == 13
    n_params = sum(math.prod(s) for k, s in head_keys() if not k.endswith("_null_idx"))
    assert sum(p.numel() for p in default_policy.parameters()) == n_params


def test_head_checkpoint_loads_strictly_both_ways(default_policy):
    g = torch.Generator().manual_seed(0)
    head_sd = {
        k: (torch.tensor(13) if k.endswith("_null_idx") else torch.randn(s, generator=g)) for k, s in head_keys()
    }
    p = default_policy
    p.load_state_dict(head_sd, strict=True)
    back = p.state_dict()
    assert list(back) == list(head_sd) and all(torch.equal(back[k], head_sd[k]) for k in head_sd)
    with pytest.raises(RuntimeError, match="Missing key"):  # the 0872525b class is a different network
        FactoredPolicy(D, feature_dim=512, lstm_hidden_dim=512).load_state_dict(head_sd, strict=True)


# What esper HEAD's own class builds with torch.manual_seed(0): shape, dtype, sum, sum of |x| and first
# element of every state_dict tensor, printed from esper-lite 2016337e in a separate venv (numbers only).
HEAD_SEED0 = Path(__file__).parent / "data" / "head_2016337e_seed0.json"


def test_default_constructor_is_heads_default_network():
    """``FactoredPolicyV2()`` = esper HEAD's default network (bundle default state_dim 23 + 31 * 3 = 116):
    same keys, shapes, dtypes and, from the same seed, the same weights as HEAD's own class."""
    head = json.loads(HEAD_SEED0.read_text())["tensors"]
    torch.manual_seed(0)
    p = FactoredPolicyV2()
    assert p.state_dim == 116 and p.feature_net[0].in_features == 116 + 3 * 4
    sd = p.state_dict()
    assert list(sd) == list(head)
    for k, (shape, dtype, total, abs_total, first) in head.items():
        v = sd[k]
        assert list(v.shape) == shape and str(v.dtype) == f"torch.{dtype}", k
        d = v.double()
        tol = 1e-5 * max(1.0, abs_total)
        assert abs(float(d.sum()) - total) <= tol and abs(float(d.abs().sum()) - abs_total) <= tol, k
        assert abs(float(d.flatten()[0]) - first) <= 1e-6, k
    # a HEAD-shaped checkpoint (random values, HEAD's dtypes) loads strictly into the default build
    g = torch.Generator().manual_seed(3)
    ckpt = {k: (torch.tensor(13) if dt == "int64" else torch.randn(s, generator=g)) for k, (s, dt, *_) in head.items()}
    FactoredPolicyV2().load_state_dict(ckpt, strict=True)
    with pytest.raises(RuntimeError, match="size mismatch"):  # the env's 114 features: another network
        FactoredPolicyV2(114).load_state_dict(ckpt, strict=True)


@pytest.mark.parametrize("num_slots", [3, 5])
def test_esper_bundle_default_network_loads_into_default_constructor(esper_standin_head_v2, num_slots):
    """The stand-in's HEAD bundle with its defaults (state_dim from the slot count, 23 + 31 S) -> its
    network's state_dict loads strictly into ``FactoredPolicyV2(slot_config=...)`` and back."""
    from esper.leyline.slot_config import SlotConfig
    from esper.tamiyo.policy.lstm_bundle import LSTMPolicyBundle

    cfg = SlotConfig(tuple(f"r0c{i}" for i in range(num_slots)))
    esper_sd = LSTMPolicyBundle(slot_config=cfg).network.state_dict()
    p = FactoredPolicyV2(slot_config=cfg)
    assert p.state_dim == 23 + 31 * num_slots
    p.load_state_dict(esper_sd, strict=True)
    LSTMPolicyBundle(slot_config=cfg).network.load_state_dict(p.state_dict(), strict=True)


def test_residual_lstm_keys_with_layers_and_projection():
    p = FactoredPolicyV2(D, 48, 32, 3)
    keys = list(p.state_dict())
    assert (
        "lstm.input_proj.weight" in keys and "lstm.layers.2.weight_hh_l0" in keys and "lstm.layer_norms.2.bias" in keys
    )
    assert "lstm.input_proj.weight" not in FactoredPolicyV2(D, 32, 32, 1).state_dict()  # Identity when F == H


def test_init_scheme_is_heads():
    torch.manual_seed(0)
    p = FactoredPolicyV2(D, 96, 64, 3)  # feature_dim != H: input_proj is a Linear

    def orthogonal(w, gain):
        m = w @ w.t() if w.shape[0] <= w.shape[1] else w.t() @ w
        torch.testing.assert_close(m, gain**2 * torch.eye(m.shape[0]), atol=1e-4, rtol=1e-4)

    orthogonal(p.feature_net[0].weight, math.sqrt(2))
    orthogonal(p.lstm.input_proj.weight, math.sqrt(2))
    for h in HEAD_NAMES:
        orthogonal(p.head_module(h)[0].weight, math.sqrt(2))
        orthogonal(p.head_module(h)[-1].weight, 0.01)
    for head in (p.state_value_head, p.q_head, p.contribution_predictor):
        orthogonal(head[0].weight, math.sqrt(2))
        orthogonal(head[-1].weight, 0.1)
    assert torch.count_nonzero(p.contribution_predictor[-1].bias) == 0
    for layer in p.lstm.layers:
        orthogonal(layer.weight_ih_l0, 1.0)
        orthogonal(layer.weight_hh_l0, 1.0)
        for b in (layer.bias_ih_l0, layer.bias_hh_l0):  # forget quarter = 1 + log(L), rest 0
            expected = torch.zeros(4 * 64)
            expected[64:128] = 1.0 + math.log(3)
            torch.testing.assert_close(b.detach(), expected)
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.1 for m in p.contribution_predictor)
    assert isinstance(p.lstm_ln, torch.nn.Identity) and p.value_head_schema_version == 2


def test_zeroth_order_class_rejects_head_style_positional_call():
    with pytest.raises(ValueError, match="num_slots=512 is implausible.*FactoredPolicyV2"):
        FactoredPolicy(116, 512, 512, 1)
    with pytest.raises(TypeError, match="FactoredPolicyV2"):
        FactoredPolicy(116, num_slots=3.0)
    FactoredPolicy(114, 3, feature_dim=16, lstm_hidden_dim=16)  # the 0872525b call still works


# ---- get_action -------------------------------------------------------------------------------------
@pytest.mark.parametrize("floors", [None, FLOORS])
@pytest.mark.parametrize("sbo", [False, True])
def test_get_action_deterministic_equals_plain_torch_head_algorithm(floors, sbo):
    p = small_policy()
    state, bp, masks, slot_by_op = inputs(40, sbo=sbo)
    hidden = p.get_initial_hidden(40)
    got = p.get_action(
        state,
        bp,
        hidden,
        **mask_kwargs(masks),
        slot_by_op_mask=slot_by_op,
        deterministic=True,
        probability_floor=floors,
        return_op_logits=True,
    )
    ref = reference_get_action_v2(p, state, bp, hidden, masks, slot_by_op, deterministic=True, probability_floor=floors)
    assert list(got.actions) == [
        "op",
        "style",
        "slot",
        "blueprint",
        "tempo",
        "alpha_target",
        "alpha_speed",
        "alpha_curve",
    ]
    assert list(got.head_entropies) == list(HEAD_NAMES)
    for h in HEAD_NAMES:
        assert torch.equal(got.actions[h], ref.actions[h]), h
        torch.testing.assert_close(got.log_probs[h], ref.log_probs[h], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got.head_entropies[h], ref.head_entropies[h], atol=1e-4, rtol=1e-4)
        assert ((got.head_entropies[h] >= 0) & (got.head_entropies[h] <= 1 + 1e-5)).all()
    torch.testing.assert_close(got.values, ref.values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.q_op, ref.q_op, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.sampled_op, got.actions["op"])  # q_op was read at the returned op (value_read_op)
    assert torch.equal(got.op_logits == -1e4, ~masks["op"])
    for a, b in zip(got.hidden, ref.hidden):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_get_action_with_injected_noise_is_the_kernel_on_the_networks_outputs():
    p = small_policy()
    state, bp, masks, slot_by_op = inputs(24, sbo=True)
    g = torch.Generator().manual_seed(3)
    noise = {h: -torch.log(-torch.log(torch.rand(24, k, generator=g))) for h, k in SIZES.items()}
    got = p.get_action(
        state, bp, None, **mask_kwargs(masks), slot_by_op_mask=slot_by_op, probability_floor=FLOORS, noise=noise
    )
    with torch.no_grad():
        out = p.forward(state[:, None], bp[:, None])
        x = out["lstm_out"][:, 0]
        logits = {h: out[f"{h}_logits"][:, 0] for h in HEAD_NAMES}
        ref = select_actions_v2_reference(
            logits,
            masks,
            p.q_values(x),
            p._compute_state_value(x),
            floors=FLOORS,
            deterministic=False,
            noise=noise,
            slot_by_op=slot_by_op,
        )
    for h in HEAD_NAMES:
        assert torch.equal(got.actions[h], ref.actions[h]), h
    torch.testing.assert_close(got.values, ref.values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.expected_value, ref.expected_value, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("floors", [None, FLOORS])
def test_rollout_log_probs_equal_update_log_probs(floors):
    """Stored old_log_probs (get_action) == evaluate_actions on the same actions: unbiased ratio."""
    p = small_policy()
    state, bp, masks, _ = inputs(64)
    hidden = p.get_initial_hidden(64)
    res = p.get_action(
        state, bp, hidden, **mask_kwargs(masks), probability_floor=floors, generator=torch.Generator().manual_seed(0)
    )
    acts = {h: a[:, None].clone() for h, a in res.actions.items()}
    lp, value, ent, _, contrib, q = p.evaluate_actions(
        state[:, None],
        bp[:, None],
        acts,
        **{k: m[:, None] for k, m in mask_kwargs(masks).items()},
        hidden=hidden,
        probability_floor=floors,
    )
    for h in HEAD_NAMES:
        torch.testing.assert_close(lp[h][:, 0], res.log_probs[h], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ent[h][:, 0], res.head_entropies[h], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(value[:, 0], res.values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(q[:, 0], res.q_op, atol=1e-5, rtol=1e-5)
    assert contrib.shape == (64, 1, 3)


def test_values_are_v_of_s_and_op_independent():
    p = small_policy()
    state, bp, _, _ = inputs(16)
    det = p.get_action(state, bp, deterministic=True)
    stoch = p.get_action(state, bp, deterministic=False)
    single = torch.zeros(16, 6, dtype=torch.bool)
    single[:, int(LifecycleOp.PRUNE)] = True
    forced = p.get_action(state, bp, op_mask=single)
    with torch.no_grad():
        expected = p._compute_state_value(p.forward(state[:, None], bp[:, None])["lstm_out"])[:, 0]
    for r in (det, stoch, forced):
        torch.testing.assert_close(r.values, expected, atol=1e-5, rtol=1e-5)
    assert (forced.actions["op"] == int(LifecycleOp.PRUNE)).all()
    assert not torch.allclose(forced.q_op, det.q_op)  # Q depends on the op, V does not


def test_get_action_shape_errors():
    p = small_policy()
    state, bp, masks, sbo = inputs(4, sbo=True)
    with pytest.raises(ValueError, match="requires seq_len=1, got 2"):
        p.get_action(torch.randn(4, 2, D), torch.zeros(4, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="slot_by_op_mask must have shape \\[batch, NUM_OPS, num_slots\\]"):
        p.get_action(state, bp, slot_by_op_mask=sbo[:, 0])
    with pytest.raises(ValueError, match="slot_by_op_mask must be a bool \\[batch, NUM_OPS, num_slots\\]"):
        p.get_action(state, bp, slot_by_op_mask=sbo[:, :5])
    with pytest.raises(ValueError, match="op_mask must have shape \\[4, 1, 6\\]"):
        p.get_action(state, bp, op_mask=masks["op"][:, :5])
    r = p.get_action(state[:, None], bp[:, None])  # [B, 1, D] works too
    assert r.actions["op"].shape == (4,)


# ---- validation ------------------------------------------------------------------------------------
@pytest.fixture
def validation():
    old = FactoredPolicyV2.validate
    yield
    FactoredPolicyV2.validate = old


@pytest.mark.parametrize("deterministic", [False, True])
def test_empty_masks_raise_when_validating(validation, deterministic):
    FactoredPolicyV2.validate = True
    p = small_policy()
    state, bp, _, _ = inputs(2)
    with pytest.raises(InvalidStateMachineError, match="No valid (op )?actions available"):
        p.get_action(state, bp, op_mask=torch.zeros(2, 6, dtype=torch.bool), deterministic=deterministic)
    only_germinate = torch.zeros(2, 6, dtype=torch.bool)
    only_germinate[:, 1] = True
    with pytest.raises(InvalidStateMachineError, match="No valid actions available.*'slot'"):
        p.get_action(state, bp, slot_mask=torch.zeros(2, 3, dtype=torch.bool), op_mask=only_germinate)
    with pytest.raises(InvalidStateMachineError, match="No valid op actions available in forward"):
        p.forward(state[:, None], bp[:, None], None, op_mask=torch.zeros(2, 1, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="invalid indices: \\[-2\\]"):
        p.get_action(state, torch.full_like(bp, -2))
    with pytest.raises(ValueError, match="invalid indices: \\[13\\]"):
        p.evaluate_actions(
            state[:, None], torch.full_like(bp, 13)[:, None], {h: torch.zeros(2, 1, dtype=torch.long) for h in SIZES}
        )


def test_validation_off_no_sync_errors_but_evaluate_guard_still_raises(validation):
    FactoredPolicyV2.validate = False
    p = small_policy()
    state, bp, _, _ = inputs(3)
    r = p.get_action(state, bp, op_mask=torch.zeros(3, 6, dtype=torch.bool))  # no raise; bad rows marked
    assert (r.actions["op"] == -1).all() and torch.isnan(r.values).all()
    with pytest.raises(IndexError):  # out-of-range blueprint reaches nn.Embedding
        p.get_action(state, torch.full_like(bp, -2))
    acts = {h: torch.zeros(3, 1, dtype=torch.long) for h in SIZES}
    with pytest.raises(InvalidStateMachineError, match="no valid actions post-canonicalization"):
        p.evaluate_actions(state[:, None], bp[:, None], acts, op_mask=torch.zeros(3, 1, 6, dtype=torch.bool))
    acts["op"][:] = int(LifecycleOp.GERMINATE)  # blueprint free: an empty blueprint mask is caught too
    with pytest.raises(InvalidStateMachineError):
        p.evaluate_actions(state[:, None], bp[:, None], acts, blueprint_mask=torch.zeros(3, 1, 13, dtype=torch.bool))
    acts["op"][:] = int(LifecycleOp.WAIT)  # ... but not when WAIT canonicalises it to NOOP
    p.evaluate_actions(state[:, None], bp[:, None], acts, blueprint_mask=torch.zeros(3, 1, 13, dtype=torch.bool))


# ---- evaluate_actions / forward / contributions --------------------------------------------------------
def test_evaluate_actions_gradients():
    p = small_policy()
    p.train()
    state, bp, masks, _ = inputs(4, T=5)
    acts = {h: torch.randint(0, k, (4, 5)) for h, k in SIZES.items()}
    lp, value, _ent, hidden, contrib, q = p.evaluate_actions(
        state, bp, acts, **mask_kwargs(masks), probability_floor=FLOORS
    )
    assert value.shape == q.shape == (4, 5) and contrib.shape == (4, 5, 3) and hidden[0].shape == (2, 4, 32)
    p.zero_grad()
    value.sum().backward(retain_graph=True)
    assert p.lstm.layers[0].weight_hh_l0.grad.abs().sum() > 0  # V(s): full gradient into the LSTM
    p.zero_grad()
    (q.sum() + contrib.sum()).backward(retain_graph=True)
    assert p.lstm.layers[0].weight_hh_l0.grad is None or p.lstm.layers[0].weight_hh_l0.grad.abs().sum() == 0
    assert p.q_head[0].weight.grad.abs().sum() > 0 and p.contribution_predictor[0].weight.grad.abs().sum() > 0
    p.zero_grad()
    sum(v.sum() for v in lp.values()).backward()
    assert all(torch.isfinite(prm.grad).all() for prm in p.parameters() if prm.grad is not None)


def test_forward_keys_and_predict_contributions():
    p = small_policy()
    state, bp, masks, _ = inputs(3, T=2)
    out = p.forward(state, bp, None, **mask_kwargs(masks), probability_floor=FLOORS)
    assert set(out) == {f"{h}_logits" for h in HEAD_NAMES} | {
        "state_value",
        "q_value",
        "lstm_out",
        "sampled_op",
        "hidden",
    }
    assert out["state_value"].shape == out["q_value"].shape == out["sampled_op"].shape == (3, 2)
    assert masks["op"].gather(-1, out["sampled_op"][..., None]).all()
    torch.testing.assert_close(out["q_value"], p._compute_q(out["lstm_out"], out["sampled_op"]))
    hidden = p.get_initial_hidden(3)
    pred = p.predict_contributions(state[:, 0], bp[:, 0], hidden)
    torch.testing.assert_close(pred, p.contribution_predictor(out["lstm_out"][:, 0]))


def test_custom_head_module_takes_the_plain_path():
    """HEAD's own tests swap a head for a custom module; get_action must still work (and agree)."""
    p = small_policy()
    state, bp, masks, _ = inputs(8)
    before = p.get_action(state, bp, **mask_kwargs(masks), deterministic=True)
    inner = p.op_head

    class Wrapped(torch.nn.Module):
        def forward(self, x):
            return inner(x)

    p.op_head = Wrapped()
    after = p.get_action(state, bp, **mask_kwargs(masks), deterministic=True)
    for h in HEAD_NAMES:
        assert torch.equal(before.actions[h], after.actions[h]), h
    torch.testing.assert_close(before.values, after.values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(before.q_op, after.q_op, atol=1e-5, rtol=1e-5)
