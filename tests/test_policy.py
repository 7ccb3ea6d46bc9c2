"""FactoredPolicy: esper drop-in compatibility, the single op draw, and agreement with ReferencePolicy."""

from __future__ import annotations

import math

import pytest
import torch

from esper_fast import FactoredPolicy, GetActionResult, InvalidStateMachineError
from esper_fast.constants import HEAD_NAMES, GerminationStyle, LifecycleOp
from esper_fast.network import FactoredNetwork
from esper_fast.ops.actions import select_actions
from esper_fast.ops.actions_v2 import select_actions_v2
from esper_fast.policy import value_read_op
from esper_fast.reference_policy import ReferencePolicy
from tests.conftest import BACKEND_DEVICES, requires_cuda
from tests.op_value import assert_value_read_at_returned_op, q_of_returned_op

STATE_DIM = 114
CPU_BACKENDS = ["torch", "cpu"]  # triton-interpreter policy paths are covered in test_actions.py


def esper_state_dict_shapes(state_dim=114, S=3, H=512, F=512, L=1) -> dict[str, tuple[int, ...]]:
    """esper 0872525b's state_dict keys and shapes, written out by hand."""
    half = H // 2
    shapes = {
        "feature_net.0.weight": (F, state_dim + 4 * S),
        "feature_net.0.bias": (F,),
        "feature_net.1.weight": (F,),
        "feature_net.1.bias": (F,),
    }
    for k in range(L):
        inp = F if k == 0 else H
        shapes.update(
            {
                f"lstm.weight_ih_l{k}": (4 * H, inp),
                f"lstm.weight_hh_l{k}": (4 * H, H),
                f"lstm.bias_ih_l{k}": (4 * H,),
                f"lstm.bias_hh_l{k}": (4 * H,),
            }
        )
    shapes.update({"lstm_ln.weight": (H,), "lstm_ln.bias": (H,)})
    for head, n in [
        ("slot", S),
        ("style", 4),
        ("tempo", 3),
        ("alpha_target", 3),
        ("alpha_speed", 4),
        ("alpha_curve", 5),
        ("op", 6),
    ]:
        shapes.update(
            {
                f"{head}_head.0.weight": (half, H),
                f"{head}_head.0.bias": (half,),
                f"{head}_head.2.weight": (n, half),
                f"{head}_head.2.bias": (n,),
            }
        )
    shapes.update(
        {
            "blueprint_embedding.embedding.weight": (14, 4),
            "blueprint_embedding._null_idx": (),
            "blueprint_head.0.weight": (H, H),
            "blueprint_head.0.bias": (H,),
            "blueprint_head.2.weight": (half, H),
            "blueprint_head.2.bias": (half,),
            "blueprint_head.4.weight": (13, half),
            "blueprint_head.4.bias": (13,),
            "value_head.0.weight": (half, H + 6),
            "value_head.0.bias": (half,),
            "value_head.2.weight": (1, half),
            "value_head.2.bias": (1,),
        }
    )
    return shapes


def small_policy(cls=FactoredPolicy, seed=0, **kw) -> FactoredNetwork:
    torch.manual_seed(seed)
    return cls(STATE_DIM, feature_dim=32, lstm_hidden_dim=32, **kw)


def inputs(B=6, T=None, seed=0, S=3):
    g = torch.Generator().manual_seed(seed)
    lead = (B,) if T is None else (B, T)
    state = torch.randn(*lead, STATE_DIM, generator=g)
    bp = torch.randint(-1, 13, (*lead, S), generator=g)
    return state, bp


def random_masks(B, seed=0, sizes=None):
    g = torch.Generator().manual_seed(seed)
    sizes = sizes or FactoredPolicy(STATE_DIM, feature_dim=8, lstm_hidden_dim=8).head_sizes
    out = {}
    for head, n in sizes.items():
        m = torch.rand(B, n, generator=g) < 0.6
        m[torch.arange(B), torch.randint(0, n, (B,), generator=g)] = True
        if head == "style":  # esper's env masks always allow SIGMOID_ADD (the forced style)
            m[:, int(GerminationStyle.SIGMOID_ADD)] = True
        out[f"{head}_mask"] = m
    return out


def head_noise(B, sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {h: -torch.log(-torch.log(torch.rand(B, n, generator=g))) for h, n in sizes.items()}


def spread_op_distribution(policy: FactoredNetwork) -> None:
    """Make the op head's logits ~0 everywhere so pi(op) is close to uniform over the valid ops."""
    with torch.no_grad():
        policy.op_head[2].weight.zero_()
        policy.op_head[2].bias.zero_()


# ---- drop-in compatibility ------------------------------------------------------------------------
def test_default_parameter_count_matches_esper():
    assert sum(p.numel() for p in FactoredPolicy(STATE_DIM).parameters()) == 3_625_314


@pytest.mark.parametrize("cls", [FactoredPolicy, ReferencePolicy])
def test_esper_format_state_dict_loads_strictly_both_ways(cls):
    shapes = esper_state_dict_shapes()
    g = torch.Generator().manual_seed(0)
    esper_sd = {
        k: (torch.tensor(13) if k.endswith("_null_idx") else torch.randn(s, generator=g)) for k, s in shapes.items()
    }
    policy = cls(STATE_DIM)
    policy.load_state_dict(esper_sd, strict=True)
    ours = policy.state_dict()
    assert set(ours) == set(shapes)
    assert {k: tuple(v.shape) for k, v in ours.items()} == shapes
    assert all(torch.equal(ours[k], esper_sd[k]) for k in shapes)
    assert ours["blueprint_embedding._null_idx"].dtype == torch.int64


def test_state_dict_order_follows_esper_registration_order():
    prefixes = []
    for key in FactoredPolicy(STATE_DIM).state_dict():
        name = key.split(".")[0]
        if not prefixes or prefixes[-1] != name:
            prefixes.append(name)
    assert prefixes == [
        "feature_net",
        "lstm",
        "lstm_ln",
        "slot_head",
        "style_head",
        "tempo_head",
        "alpha_target_head",
        "alpha_speed_head",
        "alpha_curve_head",
        "op_head",
        "blueprint_embedding",
        "blueprint_head",
        "value_head",
    ]


def test_two_layer_lstm_keys():
    policy = FactoredPolicy(STATE_DIM, feature_dim=16, lstm_hidden_dim=8, lstm_layers=2)
    shapes = esper_state_dict_shapes(H=8, F=16, L=2)
    assert {k: tuple(v.shape) for k, v in policy.state_dict().items()} == shapes


def test_init_scheme_is_esper_s():
    torch.manual_seed(0)
    p = FactoredPolicy(STATE_DIM, feature_dim=64, lstm_hidden_dim=64)

    def row_orthogonal(w, gain):  # orthogonal_: W W^T = gain^2 I (rows <= cols) or W^T W (else)
        m = w @ w.t() if w.shape[0] <= w.shape[1] else w.t() @ w
        torch.testing.assert_close(m, gain**2 * torch.eye(m.shape[0]), atol=1e-4, rtol=1e-4)

    row_orthogonal(p.feature_net[0].weight, math.sqrt(2))
    row_orthogonal(p.blueprint_head[2].weight, math.sqrt(2))
    row_orthogonal(p.value_head[0].weight, math.sqrt(2))
    for head in HEAD_NAMES:
        row_orthogonal(p.head_module(head)[-1].weight, 0.01)
    row_orthogonal(p.value_head[2].weight, 1.0)
    row_orthogonal(p.lstm.weight_ih_l0, 1.0)
    row_orthogonal(p.lstm.weight_hh_l0, 1.0)
    H = 64
    for bias in (p.lstm.bias_ih_l0, p.lstm.bias_hh_l0):
        expected = torch.zeros(4 * H)
        expected[H : 2 * H] = 1.0
        assert torch.equal(bias.detach(), expected)
    assert all((m.bias == 0).all() for m in p.modules() if isinstance(m, torch.nn.Linear))
    assert 0.015 < p.blueprint_embedding.embedding.weight.std().item() < 0.025
    assert torch.equal(p.lstm_ln.weight.detach(), torch.ones(H))


def test_one_definition_of_the_value_modes():
    import ast
    from pathlib import Path

    from esper_fast.constants import POLICY_VALUE_MODES, TRAINER_VALUE_MODES

    assert TRAINER_VALUE_MODES == (*POLICY_VALUE_MODES, "legacy")
    package = Path(__file__).resolve().parents[1] / "esper_fast"
    for path in package.rglob("*.py"):  # nothing but constants.py binds a *VALUE_MODES name
        for node in ast.walk(ast.parse(path.read_text())):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            assert path.name == "constants.py" or not any(n.endswith("VALUE_MODES") for n in names), path
    with pytest.raises(ValueError, match="value_mode must be one of"):
        ReferencePolicy(STATE_DIM, value_mode="legacy")  # a trainer mode, not a policy's


def test_constructor_errors_name_the_argument():
    with pytest.raises(ValueError, match="value_mode must be one of"):
        FactoredPolicy(STATE_DIM, value_mode="v")
    with pytest.raises(ValueError, match="lstm_hidden_dim must be even"):
        FactoredPolicy(STATE_DIM, lstm_hidden_dim=7)
    with pytest.raises(ValueError, match="state_dim must be >= 1"):
        FactoredPolicy(0)


# ---- Q(s, .) from the split value head ------------------------------------------------------------
def test_q_values_equal_esper_one_hot_value_for_every_op():
    policy = small_policy()
    lstm_out = torch.randn(5, 3, 32)
    q_all = policy.q_values(lstm_out)
    assert q_all.shape == (5, 3, 6)
    for op in range(6):
        one_hot_value = policy._compute_value(lstm_out, torch.full((5, 3), op))
        torch.testing.assert_close(q_all[..., op], one_hot_value, atol=1e-6, rtol=1e-5)


def test_q_values_gradients_equal_one_hot_path():
    policy = small_policy()
    lstm_out = torch.randn(7, 1, 32)
    op = torch.randint(0, 6, (7, 1))
    g1 = torch.autograd.grad(
        policy.q_values(lstm_out).gather(-1, op[..., None]).sum(), list(policy.value_head.parameters())
    )
    g2 = torch.autograd.grad(policy._compute_value(lstm_out, op).sum(), list(policy.value_head.parameters()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# ---- the op is chosen once -----------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("deterministic", [True, False])
def test_value_is_q_of_the_returned_op(backend, deterministic):
    policy = small_policy(backend=backend)
    spread_op_distribution(policy)
    state, bp = inputs(256)
    res = policy.get_action(state, bp, **random_masks(256), deterministic=deterministic)
    assert_value_read_at_returned_op(policy, state, bp, res)
    assert torch.equal(res.sampled_op, res.actions["op"])  # the kernel read q_op at the op it returned
    lstm_out = policy.forward(state[:, None], bp[:, None])["lstm_out"]
    expected = policy._compute_value(lstm_out[:, 0:1], res.actions["op"][:, None]).squeeze(1)
    torch.testing.assert_close(res.values, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_value_read_op_confirms_every_backends_q_op(backend, device, dtype):
    """sampled_op (value_read_op) is the returned op on every backend, both fused ops and every q dtype
    (each writes float(q[n, op]) bit for bit); a q_op read at the next row's op gives -1 exactly where
    that op's Q differs; a bad row (op -1, NaN) stays -1."""
    from tests.test_actions import make_heads

    n = 33
    logits, masks, q, sbo = make_heads(n, device, seed=8, dtype=dtype)
    masks["op"][5] = False  # a bad row: op -1, q_op NaN (validate=False)
    value = torch.randn(n, device=device).to(dtype)
    for sel in (
        select_actions(logits, masks, q, slot_by_op=sbo, backend=backend, validate=False),
        select_actions_v2(logits, masks, q, value, slot_by_op=sbo, backend=backend, validate=False),
    ):
        op = sel.actions["op"]
        assert op[5] == -1 and bool((op >= 0).sum() == n - 1)
        assert torch.equal(value_read_op(q, op, sel.q_op), op)
        shifted = q.float().gather(-1, op.roll(-1).clamp(min=0)[:, None]).squeeze(-1)  # row i+1's op
        differs = shifted != sel.q_op
        assert differs.sum() > n // 2
        assert torch.equal(value_read_op(q, op, shifted), torch.where(differs, -1, op))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_expected_mode_value_is_policy_weighted_q(backend):
    policy = small_policy(backend=backend, value_mode="expected")
    state, bp = inputs(64)
    masks = random_masks(64)
    res = policy.get_action(state, bp, **masks)
    fwd = policy.forward(state[:, None], bp[:, None], None, *[m[:, None] for m in masks.values()])
    probs = torch.softmax(fwd["op_logits"][:, 0], -1)
    expected = (probs * fwd["q_values"][:, 0]).sum(-1)
    torch.testing.assert_close(res.values, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.expected_value, expected, atol=1e-5, rtol=1e-5)
    det = policy.get_action(state, bp, **masks, deterministic=True)
    torch.testing.assert_close(det.values, res.values, atol=1e-6, rtol=1e-6)  # op-independent


@pytest.mark.parametrize("value_mode", ["q_op", "expected"])
@pytest.mark.parametrize("deterministic", [True, False])
def test_agrees_with_reference_policy_on_every_head(value_mode, deterministic):
    fused = small_policy(value_mode=value_mode, backend="cpu")
    ref = ReferencePolicy(STATE_DIM, feature_dim=32, lstm_hidden_dim=32, value_mode=value_mode)
    ref.load_state_dict(fused.state_dict())
    spread_op_distribution(fused)
    spread_op_distribution(ref)
    state, bp = inputs(300, seed=3)
    masks = random_masks(300, seed=4)
    hidden = (torch.randn(1, 300, 32), torch.randn(1, 300, 32))
    noise = head_noise(300, fused.head_sizes, seed=5)
    a = fused.get_action(state, bp, hidden, **masks, deterministic=deterministic, noise=noise)
    b = ref.get_action(state, bp, hidden, **masks, deterministic=deterministic, noise=noise)
    for head in HEAD_NAMES:
        assert torch.equal(a.actions[head], b.actions[head]), head
        torch.testing.assert_close(a.log_probs[head], b.log_probs[head], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.head_entropies[head], b.head_entropies[head], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-5)
    for x, y in zip(a.hidden, b.hidden):
        torch.testing.assert_close(x, y)
    assert (
        list(a.actions)
        == list(b.actions)
        == ["op", "style", "slot", "blueprint", "tempo", "alpha_target", "alpha_speed", "alpha_curve"]
    )


def test_legacy_reference_mismatches_value_op_and_fixed_modes_never_do():
    torch.manual_seed(0)
    legacy = ReferencePolicy(STATE_DIM, feature_dim=32, lstm_hidden_dim=32, legacy=True)
    fixed_ref = ReferencePolicy(STATE_DIM, feature_dim=32, lstm_hidden_dim=32)
    fused = FactoredPolicy(STATE_DIM, feature_dim=32, lstm_hidden_dim=32)
    for p in (fixed_ref, fused):
        p.load_state_dict(legacy.state_dict())
    for p in (legacy, fixed_ref, fused):
        spread_op_distribution(p)
    state, bp = inputs(2000, seed=1)
    rates = {}
    for name, p in [("legacy", legacy), ("reference", fixed_ref), ("fused", fused)]:
        res = p.get_action(state, bp)
        lstm_out = p.forward(state[:, None], bp[:, None])["lstm_out"][:, 0:1]
        q_action = p._compute_value(lstm_out, res.actions["op"][:, None]).squeeze(1)
        rates[name] = (
            (res.sampled_op != res.actions["op"]).float().mean().item(),
            (~torch.isclose(res.values, q_action, atol=1e-5)).float().mean().item(),
        )
    # near-uniform over 6 ops: two independent draws differ with probability ~5/6
    assert rates["legacy"][0] > 0.7 and rates["legacy"][1] > 0.7, rates
    assert rates["reference"] == (0.0, 0.0) and rates["fused"] == (0.0, 0.0), rates


# ---- esper's own op/value contract tests, in spirit ----------------------------------------------
@pytest.fixture
def esper_net():
    torch.manual_seed(0)
    FactoredPolicy.validate = True
    yield FactoredPolicy(state_dim=126, num_slots=3, feature_dim=64, lstm_hidden_dim=64)
    FactoredPolicy.validate = True


def esper_inputs(B=4):
    return torch.randn(B, 126), torch.randint(0, 13, (B, 3))


def test_deterministic_op_value_match(esper_net):
    state, bp = esper_inputs()
    res = esper_net.get_action(state, bp, deterministic=True)
    fwd = esper_net.forward(state[:, None], bp[:, None], hidden=None)
    argmax = fwd["op_logits"][:, 0].argmax(-1)
    assert torch.equal(res.actions["op"], argmax)
    expected = esper_net._compute_value(fwd["lstm_out"][:, 0:1], argmax[:, None]).squeeze(1)
    torch.testing.assert_close(res.values, expected, rtol=1e-5, atol=1e-5)


def test_stochastic_op_value_match(esper_net):
    state, bp = esper_inputs()
    spread_op_distribution(esper_net)
    ops = []
    for _ in range(10):
        res = esper_net.get_action(state, bp, deterministic=False)
        assert_value_read_at_returned_op(esper_net, state, bp, res)
        ops.append(res.actions["op"])
    assert len({tuple(o.tolist()) for o in ops}) > 1  # the draws differ, so the check saw several ops


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_op_value_check_fails_on_a_value_read_at_another_rows_op(backend, monkeypatch):
    """Mutant: the fused op reads Q(s_i, op_j) of another row j; the op/value check must catch it."""
    import esper_fast.policy as policy_module

    real = policy_module.select_actions

    def mutant(logits, masks, q, **kw):
        sel = real(logits, masks, q, **kw)
        other_op = sel.actions["op"].roll(1)
        wrong = q.float().gather(-1, other_op[:, None]).squeeze(-1)
        return sel._replace(q_op=wrong)

    policy = small_policy(backend=backend)
    spread_op_distribution(policy)
    state, bp = inputs(64)
    res = policy.get_action(state, bp, **random_masks(64))
    assert_value_read_at_returned_op(policy, state, bp, res)  # the real op passes
    monkeypatch.setattr(policy_module, "select_actions", mutant)
    bad = policy.get_action(state, bp, **random_masks(64))
    assert torch.equal(bad.q_op, bad.values)  # internally consistent: only the op it was read at is wrong
    with pytest.raises(AssertionError):
        assert_value_read_at_returned_op(policy, state, bp, bad)
    # sampled_op is the op q_op was read at (policy.value_read_op), no longer the action tensor itself:
    # it catches the mutant too (every row whose other-row op has a different Q)
    assert torch.equal(res.sampled_op, res.actions["op"])
    wrong_rows = ~torch.isclose(bad.q_op, q_of_returned_op(policy, state, bp, bad), atol=1e-5, rtol=1e-5)
    assert wrong_rows.sum() > 32 and torch.equal(bad.sampled_op != bad.actions["op"], wrong_rows)
    assert (bad.sampled_op[wrong_rows] == -1).all()


@pytest.mark.parametrize("deterministic", [True, False])
def test_single_valid_op_consistency(esper_net, deterministic):
    state, bp = esper_inputs()
    op_mask = torch.zeros(4, 6, dtype=torch.bool)
    op_mask[:, 2] = True
    res = esper_net.get_action(state, bp, op_mask=op_mask, deterministic=deterministic)
    assert (res.actions["op"] == 2).all()
    other = esper_net.get_action(state, bp, op_mask=op_mask, deterministic=not deterministic)
    torch.testing.assert_close(res.values, other.values, rtol=1e-5, atol=1e-5)
    assert torch.equal(res.log_probs["op"], torch.zeros(4))


def test_op_action_consistency_across_batch(esper_net):
    state, bp = esper_inputs(8)
    res = esper_net.get_action(state, bp, deterministic=True)
    for i in range(8):
        single = esper_net.forward(state[i : i + 1, None], bp[i : i + 1, None])
        assert res.actions["op"][i] == single["op_logits"][0, 0].argmax()


def test_value_recomputation_in_deterministic_mode(esper_net):
    spread_op_distribution(esper_net)
    state, bp = esper_inputs(64)
    det = esper_net.get_action(state, bp, deterministic=True)
    fwd = esper_net.forward(state[:, None], bp[:, None])
    differs = det.actions["op"] != fwd["sampled_op"][:, 0]
    assert differs.any()
    assert (det.values[differs] != fwd["value"][differs, 0]).all()


def test_bootstrap_consistency_across_calls(esper_net):
    state, bp = esper_inputs(2)
    results = [esper_net.get_action(state, bp, deterministic=True) for _ in range(5)]
    for r in results[1:]:
        assert torch.equal(r.actions["op"], results[0].actions["op"])
        assert torch.equal(r.values, results[0].values)


@pytest.mark.parametrize("deterministic", [True, False])
def test_empty_op_mask_raises(esper_net, deterministic):
    state, bp = esper_inputs(2)
    with pytest.raises(InvalidStateMachineError, match="No valid (op )?actions available"):
        esper_net.get_action(state, bp, op_mask=torch.zeros(2, 6, dtype=torch.bool), deterministic=deterministic)


def test_empty_slot_mask_raises(esper_net):
    state, bp = esper_inputs(2)
    with pytest.raises(InvalidStateMachineError, match="No valid actions available"):
        esper_net.get_action(state, bp, slot_mask=torch.zeros(2, 3, dtype=torch.bool))
    assert issubclass(InvalidStateMachineError, RuntimeError)


def test_validation_can_be_disabled(esper_net):
    state, bp = esper_inputs(2)
    FactoredPolicy.validate = False
    res = esper_net.get_action(state, bp, op_mask=torch.zeros(2, 6, dtype=torch.bool))
    assert (res.actions["op"] == -1).all() and torch.isnan(res.values).all()


def test_forward_validates_op_mask(esper_net):
    state, bp = esper_inputs(2)
    with pytest.raises(InvalidStateMachineError, match="No valid op actions available in forward"):
        esper_net.forward(state[:, None], bp[:, None], hidden=None, op_mask=torch.zeros(2, 1, 6, dtype=torch.bool))


def test_non_finite_logits_raise_value_error(esper_net):
    state, bp = esper_inputs(2)
    with torch.no_grad():
        esper_net.op_head[2].bias[0] = float("nan")
    with pytest.raises(ValueError, match="inf/nan"):
        esper_net.get_action(state, bp)


def test_style_forced_to_sigmoid_add_unless_germinate_or_set_alpha(esper_net):
    state, bp = esper_inputs(64)
    for op in LifecycleOp:
        op_mask = torch.zeros(64, 6, dtype=torch.bool)
        op_mask[:, op] = True
        for det in (True, False):
            res = esper_net.get_action(state, bp, op_mask=op_mask, deterministic=det)
            if op in (LifecycleOp.GERMINATE, LifecycleOp.SET_ALPHA_TARGET):
                if not det:
                    assert (res.actions["style"] != GerminationStyle.SIGMOID_ADD).any()
            else:
                assert (res.actions["style"] == GerminationStyle.SIGMOID_ADD).all()
                assert torch.equal(res.log_probs["style"], torch.zeros(64))


def test_style_not_forced_for_set_alpha_target_deterministic(esper_net):
    state, bp = esper_inputs(4)
    with torch.no_grad():
        esper_net.style_head[2].bias[:] = torch.tensor([0.0, 0.0, 0.0, 5.0])  # GATED_GATE preferred
    op_mask = torch.zeros(4, 6, dtype=torch.bool)
    op_mask[:, LifecycleOp.SET_ALPHA_TARGET] = True
    res = esper_net.get_action(state, bp, op_mask=op_mask, deterministic=True)
    assert (res.actions["style"] == GerminationStyle.GATED_GATE).all()


def test_evaluate_actions_scores_the_stored_op(esper_net):
    B, T = 3, 5
    state, bp = torch.randn(B, T, 126), torch.randint(-1, 13, (B, T, 3))
    masks = {k: v.view(B, T, -1) for k, v in random_masks(B * T, seed=2).items()}
    actions = {h: torch.zeros(B, T, dtype=torch.int64) for h in HEAD_NAMES}
    hidden, logps, values = None, [], []
    for t in range(T):  # roll the same sequence step by step with get_action
        res = esper_net.get_action(state[:, t], bp[:, t], hidden, **{k: v[:, t] for k, v in masks.items()})
        hidden = res.hidden
        for h in HEAD_NAMES:
            actions[h][:, t] = res.actions[h]
        logps.append(res.log_probs)
        values.append(res.values)
    log_probs, value, entropy, new_hidden = esper_net.evaluate_actions(state, bp, actions, **masks)
    for t in range(T):
        for h in HEAD_NAMES:
            torch.testing.assert_close(log_probs[h][:, t], logps[t][h], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(value[:, t], values[t], atol=1e-5, rtol=1e-5)
    for x, y in zip(new_hidden, hidden):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    assert all(((e >= -1e-6) & (e <= 1 + 1e-6)).all() for e in entropy.values())
    loss = sum(lp.sum() for lp in log_probs.values()) + value.sum() + sum(e.sum() for e in entropy.values())
    loss.backward()
    assert esper_net.op_head[2].weight.grad is not None and esper_net.value_head[0].weight.grad is not None


def test_normalized_entropy_edge_cases():
    from esper_fast.rules import normalized_entropy

    logits = torch.zeros(3, 4)
    mask = torch.tensor([[True] * 4, [True, False, False, False], [True, True, False, False]])
    ent = normalized_entropy(logits.masked_fill(~mask, -1e4), mask)
    torch.testing.assert_close(ent, torch.tensor([1.0, 0.0, 1.0]))


@pytest.mark.parametrize("two_d", [True, False])
def test_output_shapes_for_2d_and_3d_inputs(esper_net, two_d):
    B = 5
    state, bp = esper_inputs(B)
    masks = random_masks(B)
    if not two_d:
        state, bp = state[:, None], bp[:, None]
        masks = {k: v[:, None] for k, v in masks.items()}
    res = esper_net.get_action(state, bp, **masks, return_op_logits=True)
    assert isinstance(res, GetActionResult)
    assert all(res.actions[h].shape == (B,) and res.actions[h].dtype == torch.int64 for h in HEAD_NAMES)
    assert all(res.log_probs[h].shape == (B,) for h in HEAD_NAMES)
    assert res.values.shape == (B,) and res.sampled_op.shape == (B,)
    assert res.op_logits.shape == (B, 6)
    assert res.hidden[0].shape == res.hidden[1].shape == (1, B, 64)
    fwd = esper_net.forward(torch.randn(B, 7, 126), torch.randint(-1, 13, (B, 7, 3)))
    expected = {f"{h}_logits" for h in HEAD_NAMES} | {"value", "lstm_out", "sampled_op", "hidden", "q_values"}
    assert set(fwd) == expected
    assert fwd["value"].shape == fwd["sampled_op"].shape == (B, 7)
    assert fwd["q_values"].shape == (B, 7, 6) and fwd["lstm_out"].shape == (B, 7, 64)


def test_get_action_rejects_bad_inputs(esper_net):
    state, bp = esper_inputs(3)
    with pytest.raises(ValueError, match="one timestep"):
        esper_net.get_action(torch.randn(3, 2, 126), torch.randint(0, 13, (3, 2, 3)))
    with pytest.raises(ValueError, match="state must be"):
        esper_net.get_action(torch.randn(3, 100), bp)
    with pytest.raises(TypeError, match="blueprint_indices must be int64"):
        esper_net.get_action(state, bp.float())
    with pytest.raises(ValueError, match="op_mask must have shape"):
        esper_net.get_action(state, bp, op_mask=torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="slot_mask must be a bool"):
        esper_net.get_action(state, bp, slot_mask=torch.ones(3, 3))


def test_get_action_outputs_are_inference_tensors_and_initial_hidden(esper_net):
    state, bp = esper_inputs(3)
    h = esper_net.get_initial_hidden(3, "cpu")
    assert h[0].shape == (1, 3, 64) and (h[0] == 0).all()
    res = esper_net.get_action(state, bp, h)
    assert res.values.is_inference()


def test_slot_by_op_mask_restricts_slot_per_op():
    policy = small_policy(backend="cpu")
    state, bp = inputs(200)
    slot_by_op = torch.zeros(200, 6, 3, dtype=torch.bool)
    for op in range(6):
        slot_by_op[:, op, op % 3] = True
    res = policy.get_action(state, bp, slot_by_op=slot_by_op)
    assert torch.equal(res.actions["slot"], res.actions["op"] % 3)


@requires_cuda
def test_get_action_has_no_host_sync_without_validation():
    policy = small_policy().cuda()
    state, bp = (t.cuda() for t in inputs(64))  # host->device copies sync: done before checking
    masks = {k: v.cuda() for k, v in random_masks(64).items()}
    FactoredPolicy.validate = False
    try:
        policy.get_action(state, bp, **masks)  # warm-up (lazy init may sync)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        policy.get_action(state, bp, **masks)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        FactoredPolicy.validate = True


def test_fused_action_heads_equal_the_per_head_modules():
    policy = small_policy()
    lstm_out = torch.randn(9, 32)
    logits, q = policy.action_heads(lstm_out)
    for head in HEAD_NAMES:
        torch.testing.assert_close(logits[head], policy.head_module(head)(lstm_out), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(q, policy.q_values(lstm_out), atol=1e-6, rtol=1e-5)
    with torch.no_grad():  # the CPU weight cache must notice in-place parameter updates
        policy.op_head[2].bias += 1.0
    torch.testing.assert_close(policy.action_heads(lstm_out)[0]["op"], policy.op_head(lstm_out), atol=1e-6, rtol=1e-5)
