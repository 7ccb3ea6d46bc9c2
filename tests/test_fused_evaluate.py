"""The fused update path (esper_fast.fused_evaluate): same contract, values and gradients as esper's
per-head evaluate_actions, same parameters, no per-op critic intermediate, traceable by torch.compile."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from esper_fast import FactoredPolicy
from esper_fast.constants import HEAD_NAMES
from esper_fast.errors import InvalidStateMachineError
from esper_fast.ppo import Trainer, make_config
from esper_fast.ppo.agent import cpu_threads, validation_off
from esper_fast.ppo.update import evaluate_sequences
from esper_fast.reference_policy import ReferencePolicy


def make_case(net, B=3, T=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(B, T, net.state_dim, generator=g, dtype=dtype)
    bp = torch.randint(-1, 13, (B, T, net.num_slots), generator=g)
    masks = {}
    for h, n in net.head_sizes.items():
        m = torch.rand(B, T, n, generator=g) < 0.6
        m[..., 0] = True
        masks[f"{h}_mask"] = m
    actions = {h: torch.randint(0, n, (B, T), generator=g) for h, n in net.head_sizes.items()}
    actions["op"][0, :3] = torch.tensor([1, 2, 3])
    hidden = tuple(torch.randn(net.lstm_layers, B, net.lstm_hidden_dim, generator=g, dtype=dtype) for _ in range(2))
    return state, bp, actions, masks, hidden


def run(net, fused, case, with_masks=True):
    state, bp, actions, masks, hidden = case
    net.fused_evaluate = fused
    net.zero_grad(set_to_none=True)
    lp, v, ent, new_hidden = net.evaluate_actions(state, bp, actions, **(masks if with_masks else {}), hidden=hidden)
    loss = sum((lp[h] * (k + 1)).sum() + (ent[h] * (k - 3)).sum() for k, h in enumerate(HEAD_NAMES)) + (v**2).sum()
    loss.backward()
    return lp, v, ent, new_hidden, {n: p.grad.clone() for n, p in net.named_parameters()}


@pytest.mark.parametrize(
    "kw",
    [dict(feature_dim=16, lstm_hidden_dim=16), dict(num_slots=5, feature_dim=10, lstm_hidden_dim=6, lstm_layers=2)],
)
@pytest.mark.parametrize("with_masks", [True, False])
def test_fused_equals_per_head_path_values_and_gradients(kw, with_masks):
    torch.manual_seed(0)
    net = FactoredPolicy(24 + 30 * kw.get("num_slots", 3), **kw).double()
    net.validate = False
    case = make_case(net)
    ref, got = run(net, False, case, with_masks), run(net, True, case, with_masks)
    for a, b in zip(got[0].values(), ref[0].values()):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(got[1], ref[1], atol=1e-10, rtol=1e-10)
    for a, b in zip(got[2].values(), ref[2].values()):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    for a, b in zip(got[3], ref[3]):
        torch.testing.assert_close(a, b)
    assert got[4].keys() == ref[4].keys()
    for name in ref[4]:
        torch.testing.assert_close(got[4][name], ref[4][name], atol=1e-10, rtol=1e-8, msg=lambda m: f"{name}: {m}")


def test_fused_float32_matches_within_gemm_rounding():
    torch.manual_seed(1)
    net = FactoredPolicy(114, feature_dim=64, lstm_hidden_dim=64)
    net.validate = False
    case = make_case(net, B=4, T=7, dtype=torch.float32)
    ref, got = run(net, False, case), run(net, True, case)
    assert all(t.dtype == torch.float32 for t in got[0].values())
    for a, b in zip(got[0].values(), ref[0].values()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for name in ref[4]:
        torch.testing.assert_close(got[4][name], ref[4][name], atol=1e-4, rtol=1e-3)


def test_same_parameters_and_state_dict():
    torch.manual_seed(0)
    a = FactoredPolicy(114, feature_dim=16, lstm_hidden_dim=16)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    a.validate = False
    run(a.double(), True, make_case(a))
    after = a.float().state_dict()
    assert list(after) == list(before)
    assert ReferencePolicy.fused_evaluate is False and FactoredPolicy.fused_evaluate is True


class ShapeRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


@pytest.mark.parametrize("fused", [True, False])
def test_no_per_op_critic_intermediate(fused):
    """The fused path never materialises Q's ``[B, T, num_ops, H/2]`` pre-activation (the per-head
    path does: the recorder sees it there, so the check can fail)."""
    torch.manual_seed(0)
    net = FactoredPolicy(114, feature_dim=16, lstm_hidden_dim=16).double()
    net.validate = False
    state, bp, actions, masks, hidden = make_case(net)
    net.fused_evaluate = fused
    with ShapeRecorder() as rec:
        lp, v, ent, _ = net.evaluate_actions(state, bp, actions, **masks, hidden=hidden)
        (v.sum() + sum(x.sum() for x in lp.values())).backward()
    per_op = (3, 5, net.num_ops, net.lstm_hidden_dim // 2)
    assert (per_op in rec.shapes) is (not fused)


def test_validation_still_raises_on_the_fused_path():
    torch.manual_seed(0)
    net = FactoredPolicy(114, feature_dim=16, lstm_hidden_dim=16).double()
    state, bp, actions, masks, hidden = make_case(net)
    masks["tempo_mask"][1, 2] = False
    with pytest.raises(InvalidStateMachineError, match="tempo"):
        net.evaluate_actions(state, bp, actions, **masks, hidden=hidden)


def test_evaluate_sequences_fused_equals_per_piece_evaluate_actions():
    """A rollout with auto-resets inside it: the fused update path (trunk per piece, heads once) gives
    the per-piece evaluate_actions results and gradients."""
    cfg = make_config(
        "smoke",
        num_envs=4,
        rollout_steps=10,
        episode_length=6,
        feature_dim=16,
        lstm_hidden_dim=16,
        total_timesteps=80,
        eval_episodes=0,
    )
    with cpu_threads(1, "cpu"):
        tr = Trainer(cfg, run_dir=None, log=lambda _m: None)
        with validation_off(tr.policy):
            tr.rollout()
            assert tr.buffer.dones[:, :-1].any()
            results = []
            for fused in (False, True):
                tr.policy.fused_evaluate = fused
                tr.policy.zero_grad(set_to_none=True)
                lp, q, ent = evaluate_sequences(tr.policy, tr.buffer)
                (sum(x.sum() for x in lp.values()) + q.sum() + sum(x.sum() for x in ent.values())).backward()
                results.append((lp, q, ent, {n: p.grad.clone() for n, p in tr.policy.named_parameters()}))
    (lp0, q0, e0, g0), (lp1, q1, e1, g1) = results
    for h in HEAD_NAMES:
        torch.testing.assert_close(lp1[h], lp0[h], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(e1[h], e0[h], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(q1, q0, atol=1e-5, rtol=1e-5)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-4, rtol=1e-3)


def test_fused_loss_compiles_fullgraph():
    torch.manual_seed(0)
    net = FactoredPolicy(114, feature_dim=16, lstm_hidden_dim=16)
    net.validate = False
    state, bp, actions, masks, hidden = make_case(net, dtype=torch.float32)
    hidden = tuple(h.float() for h in hidden)

    def loss_fn(state, hidden):
        lp, v, ent, _ = net.evaluate_actions(state, bp, actions, **masks, hidden=hidden)
        return sum(lp[h].mean() + 0.01 * ent[h].mean() for h in HEAD_NAMES) + v.pow(2).mean()

    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    c = compiled(state, hidden)
    c.backward()
    g_c = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)
    e = loss_fn(state, hidden)
    e.backward()
    torch.testing.assert_close(c, e, atol=1e-5, rtol=1e-5)
    for n, p in net.named_parameters():
        torch.testing.assert_close(g_c[n], p.grad, atol=1e-5, rtol=1e-4)


def test_training_is_unchanged_with_the_fused_update():
    """Same seed, the fused update path on and off: two full updates (rollout + PPO) end with the same
    parameters up to float rounding (the math is the same, only its grouping differs)."""
    cfg = make_config(
        "smoke",
        num_envs=4,
        rollout_steps=10,
        episode_length=6,
        feature_dim=16,
        lstm_hidden_dim=16,
        total_timesteps=80,
        eval_episodes=0,
        update_epochs=2,
        num_minibatches=2,
    )
    finals = []
    for fused in (False, True):
        tr = Trainer(cfg, run_dir=None, log=lambda _m: None)
        tr.policy.fused_evaluate = fused
        tr.train(handle_signals=False)
        assert tr.train_steps == 2
        finals.append(tr.policy.state_dict())
    for name, value in finals[0].items():
        torch.testing.assert_close(finals[1][name], value, atol=2e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
