"""The math of the three value modes, pinned on ExactMDP with the oracle critic (exact Q^pi / V^pi).

Fixed seeds; 4096 rows x 20 steps per mode. Rows are independent, so standard errors are taken over
row means. Statements (see esper_fast.studies.advantage_bias for the derivation):

* ``expected``: E[GAE_t | s_t, a_t] = Q(s_t, a_t) - V(s_t) for every lambda; the bootstrap is V(s').
* ``q_op``: E[GAE_t | s_t, a_t, path] = Q(s_t, op_t, b_t) - Q(s_t, op_t)
  + (gamma lambda)^k gamma beta (Q(s'_e, argmax op) - V(s'_e)); the op head gets no signal.
* ``legacy``: unbiased against V^pi in expectation, but its bootstrap is biased against the value
  of the action it returns (Q(s', argmax op)) and noisy against V^pi.
"""

from __future__ import annotations

import math

import pytest
import torch

from esper_fast.envs.exact_mdp import ExactMDP
from esper_fast.studies.advantage_bias import (
    LAMBDAS,
    MODES,
    advantage_stats,
    analytic_expectation,
    format_table,
    gae,
    learn_critic,
    rollout,
    run_study,
    single_thread,
    study_policy,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only cost time (10x+ on a busy 2-core machine)."""
    with single_thread():
        yield


N_ENVS = 4096


@pytest.fixture(scope="module")
def setup():
    mdp0 = ExactMDP(1)
    policy = study_policy(mdp0, seed=0)
    exact = mdp0.solve_full(policy)
    rolls = {}
    with single_thread():
        for i, mode in enumerate(MODES):
            mdp = ExactMDP(N_ENVS, seed=100 + i)
            rolls[mode] = rollout(mdp, policy, exact.q, mode, mdp.horizon, torch.Generator().manual_seed(200 + i))
    return mdp0, policy, exact, rolls


def _mean_se(x: torch.Tensor) -> tuple[float, float]:
    rows = x.mean(1)
    return float(rows.mean()), float(rows.std()) / math.sqrt(rows.numel())


def _slope_z(resid: torch.Tensor, x: torch.Tensor) -> float:
    """z-score of the regression slope of ``resid`` on ``x`` (rows as independent units)."""
    u = (resid * x).sum(1)
    d = (x * x).sum()
    return float(u.sum() / d) / (float(u.std()) * math.sqrt(u.numel()) / float(d))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lam", LAMBDAS)
def test_gae_matches_its_analytic_expectation(setup, mode, lam):
    """GAE_t minus E[GAE_t | s_t, a_t, k_t] (module docstring) has mean 0 and is uncorrelated with the
    op advantage Q(s, op) - V(s) and with q_op's bootstrap term; the other modes' formulas fail."""
    mdp0, policy, exact, rolls = setup
    roll = rolls[mode]
    adv, _ = gae(roll, mdp0.gamma, lam)
    q_full, q, v = exact
    x_op = q[roll.state, roll.op] - v[roll.state]
    x_boot = analytic_expectation(roll, exact, "q_op", mdp0.gamma, lam, policy, mdp0) - (
        q_full[roll.state, roll.op, roll.sub] - q[roll.state, roll.op]
    )
    worst = {}
    for formula in MODES:
        resid = adv - analytic_expectation(roll, exact, formula, mdp0.gamma, lam, policy, mdp0)
        mean, se = _mean_se(resid)
        worst[formula] = max(abs(mean) / se, abs(_slope_z(resid, x_op)), abs(_slope_z(resid, x_boot)))
    own = "expected" if mode == "legacy" else mode  # legacy and expected share the same expectation
    assert worst[own] < 4.0, (mode, lam, worst)
    other = "q_op" if own == "expected" else "expected"
    assert worst[other] > 8.0, (mode, lam, worst)


@pytest.mark.parametrize("lam", LAMBDAS)
def test_expected_mode_is_unbiased(setup, lam):
    """expected: GAE - (Q(s, a) - V(s)) has mean 0, no per-cell bias, the op head gets its advantage."""
    mdp0, _, exact, rolls = setup
    st = advantage_stats(rolls["expected"], exact, mdp0.gamma, lam)
    assert abs(st["bias"]) < 4 * st["bias_se"], st
    assert st["cond_bias_rms"] < 0.1, st
    assert abs(st["slope_op"] - 1.0) < 0.1, st
    assert st["boot_rmse"] < 1e-5  # the bootstrap is V^pi(s') (fp32)
    q_full, _, v = exact
    roll = rolls["expected"]
    assert torch.allclose(roll.value.double(), v[roll.state], atol=1e-5)


def test_q_op_gives_the_op_head_no_signal(setup):
    """q_op at lambda = 0, away from the bootstrap: E[r + gamma Q(s', op') - Q(s, op) | s, op] = 0.

    So per (s, op) cell the mean advantage is 0 while the true op advantage Q(s, op) - V(s) is not:
    the per-cell bias is -(Q(s, op) - V(s)).
    """
    mdp0, policy, exact, rolls = setup
    roll = rolls["q_op"]
    adv, _ = gae(roll, mdp0.gamma, 0.0)
    _, q, v = exact
    interior = ~roll.boot_point  # no bootstrap in delta_t
    s, op = roll.state[interior], roll.op[interior]
    a = adv[interior]
    a_op = q[s, op] - v[s]
    cell = s * 6 + op
    n = torch.bincount(cell, minlength=60).double()
    means = torch.bincount(cell, weights=a, minlength=60) / n.clamp(min=1)
    true_means = torch.bincount(cell, weights=a_op, minlength=60) / n.clamp(min=1)
    big = n > 2000
    assert big.sum() >= 10
    var = torch.bincount(cell, weights=a * a, minlength=60) / n.clamp(min=1) - means**2
    se = (var / n.clamp(min=1)).sqrt()
    assert ((means[big]).abs() < 4.5 * se[big] + 1e-3).all(), (means[big], se[big])  # ~0 in every cell
    assert float(true_means[big].abs().max()) > 0.5  # ... while the true op advantage is large
    st = advantage_stats(roll, exact, mdp0.gamma, 0.0)
    assert abs(st["slope_op"]) < 0.1, st
    assert st["cond_bias_rms"] > 0.5, st
    # stored value is Q(s, op) of the op taken (the op is chosen once)
    assert torch.equal(roll.value_op, roll.op)
    assert torch.allclose(roll.value.double(), q[roll.state, roll.op], atol=1e-5)


def test_q_op_bootstrap_is_greedy_q_and_biased_against_v(setup):
    mdp0, policy, exact, rolls = setup
    roll = rolls["q_op"]
    _, q, v = exact
    bp = roll.boot_point
    s2 = roll.final_state[bp]
    greedy = policy.op_logits.float().masked_fill(~mdp0.op_mask, float("-inf")).argmax(-1)
    assert torch.equal(roll.boot_action_op[bp], greedy[s2])
    assert torch.allclose(roll.bootstrap[bp].double(), q[s2, greedy[s2]], atol=1e-5)
    st = advantage_stats(roll, exact, mdp0.gamma, 0.95)
    expected_bias = float((q[s2, greedy[s2]] - v[s2]).mean())
    assert math.isclose(st["boot_bias"], expected_bias, rel_tol=1e-4, abs_tol=1e-5)
    assert abs(st["boot_bias"]) > 10 * st["boot_bias_se"]


def test_legacy_bootstrap_is_biased(setup):
    """legacy's bootstrap is Q(s', random op) while its action is argmax: biased against the value of
    that action (esper's measurement), unbiased but noisy against V^pi; its values ignore the action."""
    mdp0, policy, exact, rolls = setup
    roll = rolls["legacy"]
    _, q, v = exact
    bp = roll.boot_point
    s2, boot = roll.final_state[bp], roll.bootstrap[bp].double()
    vs_action = boot - q[s2, roll.boot_action_op[bp]]
    se = float(vs_action.std()) / math.sqrt(vs_action.numel())
    assert abs(float(vs_action.mean())) > 10 * se  # biased against Q(s', returned op)
    st = advantage_stats(roll, exact, mdp0.gamma, 0.95)
    assert abs(st["boot_bias"]) < 4 * st["boot_bias_se"]  # ... unbiased against V^pi in expectation
    assert st["boot_rmse"] > 0.3  # ... but noisy: Var_pi Q(s', op) per sample
    assert float((roll.value_op != roll.op).float().mean()) > 0.2  # the double draw disagrees often
    for lam in LAMBDAS:
        st_l = advantage_stats(roll, exact, mdp0.gamma, lam)
        st_e = advantage_stats(rolls["expected"], exact, mdp0.gamma, lam)
        assert st_l["err_var"] > st_e["err_var"]  # same expectation as expected mode, more variance


def test_learned_critic_is_imperfect_but_improves():
    mdp0 = ExactMDP(1)
    policy = study_policy(mdp0, seed=0)
    _, q, _ = mdp0.solve_full(policy)
    err = [
        float((learn_critic(policy, "expected", updates=n, num_envs=64, seed=1) - q)[mdp0.op_mask].abs().mean())
        for n in (3, 30)
    ]
    assert err[1] < err[0]
    assert err[1] > 0.01


def test_run_study_table_and_plot(tmp_path):
    result = run_study(num_envs=256, seed=0, critic_updates=(2,), log=lambda _m: None)
    rows = result["rows"]
    assert len(rows) == 2 * len(MODES) * len(LAMBDAS)
    table = format_table(rows)
    assert table.count("\n") == len(rows) + 1 and "learned-2" in table
    pytest.importorskip("matplotlib")
    from esper_fast.studies.advantage_bias import plot_study

    path = plot_study(rows, tmp_path / "study.png")
    assert path.is_file() and path.stat().st_size > 1000


def test_cli_study_advantage_bias(tmp_path, capsys):
    from esper_fast.cli import main

    rc = main(
        ["study", "advantage-bias", "--out", str(tmp_path), "--num-envs", "128", "--critic-updates", "", "--no-plot"]
    )
    assert rc == 0
    assert "| oracle | expected | 0.95 |" in capsys.readouterr().out
    assert (tmp_path / "value_baselines_study.csv").is_file() and (tmp_path / "value_baselines_study.json").is_file()
