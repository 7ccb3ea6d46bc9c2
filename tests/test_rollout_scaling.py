"""Issue 9 item 3 (CPU): nothing in the rollout step loop scales with num_envs in Python.

Counts every torch op dispatched during a whole rollout (env step, act, buffer writes, episode
bookkeeping) at two env counts: the counts must be equal (per-env Python loops would multiply them).
"""

from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from esper_fast.ppo import Trainer, make_config
from esper_fast.ppo.agent import cpu_threads, validation_off


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


def rollout_op_counts(num_envs: int, policy: str) -> collections.Counter:
    # rollout shorter than an episode: the only bootstrap is the last step's, for every env count
    cfg = make_config("smoke", num_envs=num_envs, rollout_steps=5, episode_length=50, feature_dim=16,
                      lstm_hidden_dim=16, total_timesteps=num_envs * 5, eval_episodes=0,
                      value_mode="legacy" if policy == "reference" else "expected")  # fmt: skip
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
