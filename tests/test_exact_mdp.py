"""ExactMDP: tables, batched dynamics, and the DP solution against Monte Carlo returns (fixed seeds)."""

from __future__ import annotations

import math

import pytest
import torch

from esper_fast.constants import HEAD_NAMES, LifecycleOp
from esper_fast.envs.exact_mdp import (
    BLUEPRINT_IDS,
    NUM_STATES,
    ExactMDP,
    ExactMDPConfig,
    ExactMDPEsperEnv,
    TabularPolicy,
)
from esper_fast.ppo.agent import cpu_threads
from tests.op_value import assert_stored_q_is_q_of_stored_op


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only cost time (10x+ on a busy 2-core machine)."""
    with cpu_threads(1, "cpu"):
        yield


W, G, P, F, ADV, SETA = (
    int(LifecycleOp.WAIT),
    int(LifecycleOp.GERMINATE),
    int(LifecycleOp.PRUNE),
    int(LifecycleOp.FOSSILIZE),
    int(LifecycleOp.ADVANCE),
    int(LifecycleOp.SET_ALPHA_TARGET),
)


def test_tables_are_distributions_and_masks_depend_on_state():
    mdp = ExactMDP()
    assert torch.allclose(mdp.P.sum(-1), torch.ones(()).double())
    assert (mdp.P >= 0).all()
    assert math.isclose(float(mdp.rho0.sum()), 1.0)
    assert mdp.op_mask.any(1).all()
    assert not mdp.op_mask[:, SETA].any()  # an op that is never valid
    assert len({tuple(r.tolist()) for r in mdp.op_mask}) == 4  # empty / training / blending / fossilized
    # the blueprint matters only for GERMINATE (and only from EMPTY)
    for s in range(NUM_STATES):
        for op in range(6):
            if op != G or s != 0:
                assert torch.equal(mdp.P[s, op, 0], mdp.P[s, op, 1]) and torch.equal(mdp.P[s, op, 0], mdp.P[s, op, 2])
    assert not torch.equal(mdp.P[0, G, 0], mdp.P[0, G, 1])
    # masked ops act as WAIT
    assert torch.equal(mdp.P[0, F], mdp.P[0, W]) and torch.equal(mdp.R[0, F], mdp.R[0, W])


def test_bellman_identities_and_optimality():
    mdp = ExactMDP()
    pol = TabularPolicy.random(seed=3)
    q_full, q, v = mdp.solve_full(pol)
    pi_op, pi_sub = pol.probs(mdp)
    assert torch.allclose(q, (pi_sub * q_full).sum(-1))
    assert torch.allclose(v, (pi_op * q).sum(-1))
    assert torch.allclose(q_full, mdp.R_bar + mdp.gamma * torch.einsum("sabt,t->sab", mdp.P[..., :-1], v))
    Q, V = mdp.solve(pol)
    assert torch.equal(Q, q) and torch.equal(V, v)
    q_star, v_star = mdp.optimal()
    assert (v_star >= v - 1e-9).all()
    greedy = mdp.greedy_policy(q_star)
    assert torch.allclose(mdp.solve(greedy)[1], v_star, atol=1e-6)
    assert mdp.objective(greedy) > mdp.objective(TabularPolicy.uniform()) + 5.0


def test_step_masks_truncation_and_invalid_ops():
    cfg = ExactMDPConfig(horizon=3, reward_noise=0.0)
    mdp = ExactMDP(4, cfg, seed=0)
    mdp.set_state(torch.tensor([0, 1, 4, 7]))
    obs = mdp.observe()
    assert obs.masks["op"].shape == (4, 6) and obs.masks["blueprint"].shape == (4, 3)
    assert torch.equal(obs.obs.argmax(1), obs.state)
    # FOSSILIZE is invalid in EMPTY and TRAINING -> acts as WAIT
    r = mdp.step((torch.full((4,), F), torch.zeros(4, dtype=torch.long)))
    assert r.effective_op.tolist() == [W, W, F, W]
    assert r.reward[0] == 0.0 and math.isclose(float(r.reward[1]), -cfg.cost[0], rel_tol=1e-6)
    for _ in range(2):
        r = mdp.step((torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long)))
    alive = ~r.terminated
    assert torch.equal(r.truncated, alive)  # horizon 3: every surviving row truncates at its 3rd step
    assert (r.episode_length[r.truncated | r.terminated] >= 1).all()
    assert (r.next.time == 0).all()


def test_transition_frequencies_match_the_table():
    mdp = ExactMDP(20_000, ExactMDPConfig(horizon=1000), seed=1)
    for s, op, b in ((1 + 1, ADV, 0), (4 + 1, F, 0), (7, W, 0), (0, G, 2)):
        mdp.set_state(torch.full((20_000,), s))
        r = mdp.step((torch.full((20_000,), op), torch.full((20_000,), b)))
        nxt = torch.where(r.terminated, torch.full_like(r.final.state, NUM_STATES), r.final.state)
        freq = torch.bincount(nxt, minlength=NUM_STATES + 1).double() / 20_000
        p = mdp.P[s, op, b]
        assert (freq - p).abs().max() < 4 * math.sqrt(0.25 / 20_000) + 1e-12, (s, op, b)
        assert abs(float(r.reward.double().mean()) - float(mdp.R_bar[s, op, b])) < 4 * (
            0.5 + 8 * p[-1].sqrt()
        ) / math.sqrt(20_000)


def test_dp_value_matches_monte_carlo_returns():
    """V^pi(s) from the linear solve equals the mean discounted return of long rollouts from s."""
    n, steps = 16_384, 160  # gamma^160 ~ 3e-4: the tail is bootstrapped with the exact V
    cfg = ExactMDPConfig(horizon=10_000)
    mdp = ExactMDP(n, cfg, seed=5)
    pol = TabularPolicy.random(seed=11)
    _, _, v = mdp.solve_full(pol)
    pi_op, pi_sub = pol.probs(mdp)
    start = torch.arange(n) % NUM_STATES
    mdp.set_state(start)
    gen = torch.Generator().manual_seed(2)
    ret = torch.zeros(n, dtype=torch.float64)
    disc = torch.ones(n, dtype=torch.float64)
    alive = torch.ones(n, dtype=torch.bool)
    for _ in range(steps):
        s = mdp.state
        op = torch.multinomial(pi_op[s], 1, generator=gen).squeeze(1)
        b = torch.multinomial(pi_sub[s, op], 1, generator=gen).squeeze(1)
        r = mdp.step((op, b))
        ret += disc * r.reward.double() * alive
        alive &= ~r.terminated
        disc *= mdp.gamma
    ret += disc * v[mdp.state] * alive
    for s in range(NUM_STATES):
        g = ret[start == s]
        se = float(g.std()) / math.sqrt(g.numel())
        assert abs(float(g.mean()) - float(v[s])) < 4 * se, (s, float(g.mean()), float(v[s]), se)


def test_expected_episode_return_matches_rollouts():
    """The exact undiscounted H-step return equals the mean return of first episodes (rows from t = 0)."""
    n = 8192
    mdp = ExactMDP(n, seed=10)
    pol = TabularPolicy.random(seed=4)
    pi_op, pi_sub = pol.probs(mdp)
    gen = torch.Generator().manual_seed(0)
    mdp.reset()
    rets = torch.zeros(n, dtype=torch.float64)
    alive = torch.ones(n, dtype=torch.bool)
    for t in range(mdp.horizon):
        s = mdp.state
        op = torch.multinomial(pi_op[s], 1, generator=gen).squeeze(1)
        b = torch.multinomial(pi_sub[s, op], 1, generator=gen).squeeze(1)
        r = mdp.step((op, b))
        rets += r.reward.double() * alive
        ended = alive & (r.terminated | r.truncated)
        assert torch.allclose(r.episode_return[ended].double(), rets[ended], atol=1e-4)
        assert (r.truncated == alive & ~r.terminated).all() if t == mdp.horizon - 1 else not r.truncated.any()
        alive &= ~r.terminated
    se = float(rets.std()) / math.sqrt(n)
    assert abs(float(rets.mean()) - mdp.expected_episode_return(pol)) < 4 * se


def test_esper_view_drives_the_real_policy_and_trainer():
    from esper_fast.envs import SeedLifecycleEnv
    from esper_fast.ppo import Trainer, make_config

    env = ExactMDPEsperEnv(8, seed=0)
    ref = SeedLifecycleEnv(8, seed=0).observe()
    obs = env.observe()
    assert obs.obs.shape == ref.obs.shape and obs.blueprint_indices.shape == ref.blueprint_indices.shape
    assert obs.slot_by_op.shape == ref.slot_by_op.shape
    assert [tuple(obs.masks[h].shape) for h in HEAD_NAMES] == [tuple(ref.masks[h].shape) for h in HEAD_NAMES]
    assert torch.equal(env.state_index(obs), env.mdp.state)
    assert obs.masks["blueprint"][0].nonzero().flatten().tolist() == sorted(BLUEPRINT_IDS)
    cfg = make_config(
        "smoke",
        value_mode="expected",
        seed=0,
        num_envs=8,
        rollout_steps=20,
        episode_length=20,
        total_timesteps=8 * 20 * 2,
        eval_episodes=0,
        gamma=0.95,
    )
    trainer = Trainer(
        cfg, run_dir=None, env=ExactMDPEsperEnv(cfg.num_envs, seed=1), log=lambda _m: None, tensorboard=False
    )
    trainer.train(handle_signals=False)
    row = trainer.last_row
    assert row["charts/invalid_action_frac"] == 0.0
    trainer.rollout()  # the trained policy, unchanged during this rollout
    assert_stored_q_is_q_of_stored_op(trainer)  # the stored Q is Q(s, stored op), replayed
    assert row["charts/op_agreement"] == 1.0  # q_op read at the returned op (policy.value_read_op)
    assert row["charts/op_frac/set_alpha_target"] == 0.0


@pytest.mark.parametrize("bad", [{"op": 6, "blueprint": 0}, {"op": 0, "blueprint": 3}])
def test_step_rejects_out_of_range_actions(bad):
    mdp = ExactMDP(2)
    with pytest.raises(ValueError, match="actions"):
        mdp.step({k: torch.full((2,), v) for k, v in bad.items()})


def test_exported_from_envs():
    import esper_fast.envs

    assert esper_fast.envs.ExactMDP is ExactMDP
