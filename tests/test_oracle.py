"""The privileged oracle baseline: reads the env's hidden true contributions; shown in every evaluation."""

from __future__ import annotations

import math

import pytest
import torch

from esper_fast.envs import EnvConfig, HeuristicPolicy, OraclePolicy, SeedLifecycleEnv, evaluate_policy
from esper_fast.ppo import make_config
from esper_fast.ppo.evaluate import compare_with_baselines, format_table, gap_shares


def _mid_episode_env(steps: int = 30) -> SeedLifecycleEnv:
    env = SeedLifecycleEnv(64, EnvConfig(), seed=3)
    obs, heuristic = env.reset(7), HeuristicPolicy(env.config)
    for _ in range(steps):
        obs = env.step(heuristic(obs)).next
    return env


def test_oracle_reads_the_hidden_contributions_and_the_heuristic_does_not():
    env = _mid_episode_env()
    obs = env.observe()
    oracle, heuristic = OraclePolicy(env), HeuristicPolicy(env.config)
    a_oracle, a_heur = oracle(obs), heuristic(obs)
    env.contribution = -env.contribution  # hidden state only: the observation is unchanged
    b_oracle, b_heur = oracle(obs), heuristic(obs)
    assert all(torch.equal(a_heur[h], b_heur[h]) for h in a_heur)
    assert not torch.equal(a_oracle["op"], b_oracle["op"])


@pytest.mark.slow
def test_oracle_beats_the_heuristic():
    env = SeedLifecycleEnv(128, EnvConfig(), seed=11)
    o = evaluate_policy(env, OraclePolicy(env), 128, seed=21)
    h = evaluate_policy(env, HeuristicPolicy(env.config), 128, seed=21)
    diff = o["returns"] - h["returns"]  # same episodes: paired
    assert diff.mean() > 3 * diff.std() / diff.numel() ** 0.5


def test_evaluation_table_has_the_oracle_and_the_gap_share():
    cfg = make_config("smoke", eval_episodes=8)
    results = compare_with_baselines(None, None, cfg, 8, 5)
    assert list(results) == ["oracle", "heuristic", "random"]
    fake = {"ppo (sampled)": {"mean_return": 52.0}, "oracle": {"mean_return": 56.0}, "heuristic": {"mean_return": 50.0}}
    assert abs(gap_shares(fake)["ppo (sampled)"] - 1 / 3) < 1e-12
    table = format_table({**results, "ppo (sampled)": {**results["heuristic"]}})
    assert "oracle" in table and "share of the heuristic-to-oracle gap closed: ppo (sampled) +0.0%" in table


def test_gap_share_standard_error_matches_the_spread_over_replicates():
    """The delta-method se of the gap share agrees with the share's spread over independent replicates."""
    from esper_fast.ppo.evaluate import gap_share_with_se

    g = torch.Generator().manual_seed(3)
    n, reps = 256, 2000
    gap = 6.0 + 4.0 * torch.randn(reps, n, generator=g, dtype=torch.float64)  # oracle - heuristic per episode
    diff = 0.3 * gap + 3.0 * torch.randn(reps, n, generator=g, dtype=torch.float64)  # correlated with it
    shares, ses = zip(*(gap_share_with_se(d, o) for d, o in zip(diff, gap)))
    shares, ses = torch.tensor(shares), torch.tensor(ses)
    assert abs(float(shares.mean()) - 0.3) < 0.01
    assert abs(float(ses.mean()) / float(shares.std()) - 1) < 0.1
    share, se = gap_share_with_se(torch.tensor([1.0, 2.0]), torch.zeros(2, dtype=torch.float64))
    assert math.isnan(share) and math.isnan(se)  # no gap to close


def test_evaluation_reports_gap_share_and_margin_for_ppo():
    from esper_fast.ppo.agent import architecture, build_policy
    from esper_fast.ppo.evaluate import evaluation_markdown
    from esper_fast.ppo.normalize import ObsNormalizer

    cfg = make_config("smoke", eval_episodes=8)
    torch.manual_seed(0)
    norm = ObsNormalizer(architecture(cfg)["state_dim"])
    results = compare_with_baselines(build_policy(cfg).eval(), norm, cfg, 8, 5, ppo_modes=("sampled",))
    r = results["ppo (sampled)"]
    assert abs(r["gap_share"] - gap_shares(results)["ppo (sampled)"]) < 1e-5 and r["gap_share_se"] > 0
    table = format_table(results)
    assert f"ppo (sampled) {r['gap_share']:+.1%} +- {r['gap_share_se']:.1%}" in table
    assert f"paired standard errors: ppo (sampled) {r['vs_heuristic'] / r['vs_heuristic_se']:+.1f}" in table
    assert "gap closed (+- se): ppo (sampled)" in evaluation_markdown(results, 8, 5)
