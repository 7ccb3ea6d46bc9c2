"""Issue 9 item 3 (CPU): nothing in the rollout step loop scales with num_envs in Python.

Counts every torch op dispatched during a whole rollout (env step, act, buffer writes, episode
bookkeeping) at two env counts: the counts must be equal (per-env Python loops would multiply them).
"""

from __future__ import annotations

import collections
import dataclasses
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import esper_fast.ppo.evaluate as evaluate_module
import esper_fast.ppo.trainer as trainer_module
from esper_fast.envs import HeuristicPolicy, OraclePolicy, RandomMaskedPolicy, SeedLifecycleEnv, evaluate_policy
from esper_fast.ppo import Trainer, make_config
from esper_fast.ppo.agent import PolicyActor, cpu_threads, validation_off


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


def rollout_op_counts(num_envs: int, policy: str) -> collections.Counter:
    # rollout shorter than an episode: the only bootstrap is the last step's, for every env count
    cfg = make_config(
        "smoke",
        num_envs=num_envs,
        rollout_steps=5,
        episode_length=50,
        feature_dim=16,
        lstm_hidden_dim=16,
        total_timesteps=num_envs * 5,
        eval_episodes=0,
        value_mode="legacy" if policy == "reference" else "expected",
    )
    with cpu_threads(1, "cpu"):
        tr = Trainer(cfg, run_dir=None, log=lambda _m: None)
        with validation_off(tr.policy), OpCounter() as counter:
            tr.rollout()
    return counter.counts


@pytest.mark.parametrize("policy", ["fused", "reference"])
def test_rollout_dispatches_the_same_ops_for_any_num_envs(policy):
    small, large = rollout_op_counts(3, policy), rollout_op_counts(97, policy)
    assert sum(small.values()) > 100  # the counter sees the rollout
    assert small == large, {k: (small[k], large[k]) for k in set(small) | set(large) if small[k] != large[k]}


def test_a_per_env_python_loop_is_detected(monkeypatch):
    """Mutant: a reward clamp written as a loop over envs changes the counts (the check can fail)."""
    from esper_fast.ppo.normalize import RewardNormalizer

    real = RewardNormalizer.update_and_normalize

    def per_env(self, reward):
        out = real(self, reward)
        return torch.stack([r.clamp(-10, 10) for r in out])

    monkeypatch.setattr(RewardNormalizer, "update_and_normalize", per_env)
    assert rollout_op_counts(3, "fused") != rollout_op_counts(7, "fused")


# ---- episode ends inside the rollout, Python lines as well as torch ops ---------------------------
# The counts above use a rollout shorter than an episode. Here episodes of 4 steps end (truncation:
# the auto-reset, the truncation bootstrap, the episode bookkeeping) twice in a 10-step rollout, and
# the governor is switched off so that no env terminates early: every env count then takes the same
# branches. A Python-only per-env loop (no torch op in its body) is caught by the traced line count.


class LineCounter:
    """``sys.settrace`` counter of the Python lines executed inside the ``with`` block (every frame)."""

    def __init__(self) -> None:
        self.lines = 0

    def _local(self, frame, event, arg):
        if event == "line":
            self.lines += 1
        return self._local

    def __enter__(self) -> LineCounter:
        self._old = sys.gettrace()
        sys.settrace(lambda frame, event, arg: self._local)
        return self

    def __exit__(self, *exc) -> None:
        sys.settrace(self._old)


@pytest.fixture
def no_governor(monkeypatch):
    """Envs of the trainer and the evaluation without the governor's early terminal (same branches for every E)."""
    real = trainer_module.env_config
    patched = lambda config, **kw: dataclasses.replace(real(config, **kw), governor_drop=1e6)
    monkeypatch.setattr(trainer_module, "env_config", patched)
    monkeypatch.setattr(evaluate_module, "env_config", patched)
    return patched


def ending_rollout_counts(num_envs: int, fused: bool = True) -> tuple[int, collections.Counter, Trainer]:
    cfg = make_config(
        "smoke",
        num_envs=num_envs,
        rollout_steps=10,
        episode_length=4,
        feature_dim=16,
        lstm_hidden_dim=16,
        total_timesteps=num_envs * 10,
        eval_episodes=0,
        fused=fused,
    )
    with cpu_threads(1, "cpu"):
        tr = Trainer(cfg, run_dir=None, log=lambda _m: None)
        with validation_off(tr.policy):
            tr.rollout()  # warm-up: per-device lookup tables and other first-call caches
            with LineCounter() as lines:  # (apart: the dispatch mode's own Python is not the rollout's)
                tr.rollout()
            with OpCounter() as ops:
                tr.rollout()
    trunc = tr.buffer.truncated  # every env truncates at the same steps, at least twice; none terminates
    assert bool((trunc == trunc[:1]).all()) and int(trunc[0].sum()) >= 2
    assert not bool((tr.buffer.dones & ~trunc).any())
    return lines.lines, ops.counts, tr


@pytest.mark.parametrize("fused", [True, False])
def test_rollout_with_episode_ends_runs_the_same_python_for_any_num_envs(no_governor, fused):
    small_lines, small_ops, _ = ending_rollout_counts(3, fused)
    large_lines, large_ops, _ = ending_rollout_counts(29, fused)
    assert small_lines > 10_000 and sum(small_ops.values()) > 1000
    assert small_ops == large_ops, {
        k: (small_ops[k], large_ops[k]) for k in set(small_ops) | set(large_ops) if small_ops[k] != large_ops[k]
    }
    assert small_lines == large_lines


def test_a_python_only_per_env_loop_is_detected(no_governor, monkeypatch):
    """Mutant: per-env bookkeeping in plain Python (no torch op per env) changes the line count only."""
    real = SeedLifecycleEnv.step

    def step(self, actions):
        out = real(self, actions)
        self.mutant_total = sum(i for i in range(self.num_envs))  # one generator line per env
        return out

    monkeypatch.setattr(SeedLifecycleEnv, "step", step)
    small_lines, small_ops, _ = ending_rollout_counts(3)
    large_lines, large_ops, _ = ending_rollout_counts(29)
    assert small_ops == large_ops and small_lines != large_lines


def evaluation_counts(num_envs: int) -> tuple[int, collections.Counter]:
    """Lines / ops of ``evaluate_policy`` over 2 episodes per env for PPO, oracle, heuristic and random."""
    _, _, tr = ending_rollout_counts(num_envs)
    env = SeedLifecycleEnv(num_envs, no_governor_config(tr.config), seed=5)
    controllers = [
        PolicyActor(tr.policy, tr.obs_normalizer, seed=1),
        OraclePolicy(env),
        HeuristicPolicy(env.config),
        RandomMaskedPolicy(seed=1),
    ]
    with cpu_threads(1, "cpu"), validation_off(tr.policy):
        for c in controllers:  # warm-up
            evaluate_policy(env, c, num_episodes=2 * num_envs, seed=7)
        with LineCounter() as lines:
            for c in controllers:
                res = evaluate_policy(env, c, num_episodes=2 * num_envs, seed=7)
                assert res["num_episodes"] == 2 * num_envs and res["mean_length"] == 4.0
        with OpCounter() as ops:
            for c in controllers:
                evaluate_policy(env, c, num_episodes=2 * num_envs, seed=7)
    return lines.lines, ops.counts


def no_governor_config(config):
    return dataclasses.replace(evaluate_module.env_config(config), governor_drop=1e6)


def test_evaluation_runs_the_same_python_for_any_num_envs(no_governor):
    small_lines, small_ops = evaluation_counts(3)
    large_lines, large_ops = evaluation_counts(29)
    assert small_ops == large_ops, {
        k: (small_ops[k], large_ops[k]) for k in set(small_ops) | set(large_ops) if small_ops[k] != large_ops[k]
    }
    assert small_lines == large_lines
