"""The privileged oracle baseline: reads the env's hidden true contributions; shown in every evaluation."""

from __future__ import annotations

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
