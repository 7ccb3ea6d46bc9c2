"""Rollout and replay: the buffer holds what the policy saw, bootstraps use the right hidden state,
the update replays the rollout exactly (ratio 1 before any step), op agreement per value mode."""

from __future__ import annotations

import pytest
import torch

import esper_fast.ppo.trainer as trainer_module
from esper_fast.constants import HEAD_NAMES
from esper_fast.ppo import Trainer, make_config
from esper_fast.ppo.agent import cpu_threads, effective_masks
from esper_fast.ppo.gae import compute_gae, normalize_advantages
from esper_fast.ppo.update import evaluate_sequences, ppo_update
from tests.op_value import assert_stored_q_is_q_of_stored_op

# Short episodes (6) inside longer rollouts (10) put a truncation and an auto-reset mid-sequence.
TINY = dict(
    num_envs=4,
    rollout_steps=10,
    episode_length=6,
    feature_dim=16,
    lstm_hidden_dim=16,
    total_timesteps=80,
    eval_episodes=0,
)


@pytest.fixture(autouse=True)
def one_thread():
    """These tests drive rollout() directly, outside train()'s thread setting."""
    with cpu_threads(1, "cpu"):
        yield


def tiny_trainer(**overrides) -> Trainer:
    return Trainer(make_config("smoke", **{**TINY, **overrides}), run_dir=None, log=lambda _m: None)


class ActSpy:
    """Wraps ``trainer.act`` and records every call's inputs and result."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = trainer_module.act

        def spy(policy, obs, env_obs, hidden, **kw):
            result = real(policy, obs, env_obs, hidden, **kw)
            hid = None if hidden is None else (hidden[0].clone(), hidden[1].clone())
            self.calls.append(dict(obs=obs.clone(), env_obs=env_obs, hidden=hid, result=result, **kw))
            return result

        monkeypatch.setattr(trainer_module, "act", spy)

    def rollout_calls(self):
        return [c for c in self.calls if not c["deterministic"]]


@pytest.mark.parametrize("op_conditioned_slot", [True, False])
def test_buffer_stores_exactly_what_the_policy_saw(monkeypatch, op_conditioned_slot):
    tr = tiny_trainer(op_conditioned_slot=op_conditioned_slot)
    tr.obs_normalizer.mean = torch.full_like(tr.obs_normalizer.mean, 0.3)  # non-trivial frozen stats
    tr.obs_normalizer.var = torch.full_like(tr.obs_normalizer.var, 4.0)
    spy = ActSpy(monkeypatch)
    tr.rollout()
    b, calls = tr.buffer, spy.rollout_calls()
    assert len(calls) == TINY["rollout_steps"]
    for t, call in enumerate(calls):
        env_obs, result = call["env_obs"], call["result"]
        assert torch.equal(b.obs[:, t], call["obs"])
        assert torch.equal(b.obs[:, t], tr.obs_normalizer.normalize(env_obs.obs))  # normalised, not raw
        assert not torch.equal(b.obs[:, t], env_obs.obs)
        assert torch.equal(b.raw_obs[:, t], env_obs.obs)
        assert torch.equal(b.blueprint_indices[:, t], env_obs.blueprint_indices)
        sampled_under = effective_masks(env_obs, result.actions["op"], op_conditioned_slot)
        for h in HEAD_NAMES:
            assert torch.equal(b.masks[h][:, t], sampled_under[h]), h
            assert torch.equal(b.actions[h][:, t], result.actions[h]), h
            assert torch.equal(b.log_probs[h][:, t], result.log_probs[h]), h
        if op_conditioned_slot:  # the slot was drawn among slots where the op is valid
            op = result.actions["op"]
            ok = env_obs.slot_by_op[torch.arange(len(op)), op, result.actions["slot"]]
            assert bool(ok.all())
        assert torch.equal(b.values[:, t], result.values)
        assert torch.equal(b.old_q[:, t], result.q_op)


@pytest.mark.parametrize("value_mode", ["q_op", "expected"])
def test_bootstrap_uses_hidden_state_reached_at_truncation(monkeypatch, value_mode):
    tr = tiny_trainer(value_mode=value_mode)
    spy = ActSpy(monkeypatch)
    tr.rollout()
    b = tr.buffer
    assert bool(b.truncated[:, 5].all())  # episode_length 6: every env truncates at t=5
    step_results = {}
    t = -1
    for call in spy.calls:
        if not call["deterministic"]:
            t += 1
            step_results[t] = call["result"]
            continue
        # A bootstrap call: it must start from the hidden state this step's decision produced.
        reached = step_results[t].hidden
        assert torch.equal(call["hidden"][0], reached[0]) and torch.equal(call["hidden"][1], reached[1])
        assert call["hidden"][0].abs().sum() > 0  # not a reset state
        use = b.truncated[:, t] | ((~b.dones[:, t]) if t == TINY["rollout_steps"] - 1 else False)
        expected = torch.where(use, call["result"].values, torch.zeros_like(call["result"].values))
        assert torch.equal(b.bootstrap_values[:, t], expected)
        # q_op: the bootstrap is Q(s', argmax op) from the same call that picked the op;
        # expected: V(s') = sum_a pi(a|s') Q(s', a) from that same call
        field = "q_op" if value_mode == "q_op" else "expected_value"
        assert torch.equal(call["result"].values, getattr(call["result"], field))
    bootstrapped_steps = {t for t in range(TINY["rollout_steps"]) if b.truncated[:, t].any()} | {
        TINY["rollout_steps"] - 1
    }
    assert sum(c["deterministic"] for c in spy.calls) == len(bootstrapped_steps)
    # After the truncation the LSTM state was reset: step 6's decision started from zeros.
    first_of_new_episode = spy.rollout_calls()[6]
    assert first_of_new_episode["hidden"][0].abs().sum() == 0


@pytest.mark.parametrize("value_mode", ["q_op", "expected", "legacy"])
def test_replay_reproduces_rollout_log_probs(value_mode):
    tr = tiny_trainer(value_mode=value_mode)
    tr.rollout()
    b = tr.buffer
    with torch.no_grad():
        log_probs, q, _ = evaluate_sequences(tr.policy, b)
    for h in HEAD_NAMES:
        torch.testing.assert_close(log_probs[h], b.log_probs[h], atol=1e-5, rtol=0, msg=f"head {h}")
    if value_mode == "legacy":  # the stored value is Q(s, another op) in some rows
        assert not torch.allclose(q, b.values, atol=1e-5)
    else:
        torch.testing.assert_close(q, b.old_q, atol=1e-5, rtol=0)
    # Negative control: replaying without the mid-sequence LSTM resets gives other log-probs.
    import dataclasses

    no_reset = dataclasses.replace(b, dones=torch.zeros_like(b.dones))
    with torch.no_grad():
        wrong, _, _ = evaluate_sequences(tr.policy, no_reset)
    assert not torch.allclose(wrong["op"], b.log_probs["op"], atol=1e-5)


def test_first_update_step_sees_ratio_one():
    tr = tiny_trainer()
    tr.rollout()
    b, cfg = tr.buffer, tr.config
    adv, ret = compute_gae(b.rewards, b.values, b.dones, b.truncated, b.bootstrap_values, cfg.gamma, cfg.gae_lambda)
    stats = ppo_update(tr.policy, tr.optimizer, b, normalize_advantages(adv), ret, cfg, cfg.entropy_coef_at(0))
    assert stats["approx_kl_first"].item() < 1e-9
    assert stats["clip_fraction"].item() == 0.0
    assert stats["optimizer_steps"].item() == 1


@pytest.mark.parametrize("value_mode,agree", [("q_op", True), ("expected", True), ("legacy", False)])
def test_value_action_op_agreement(value_mode, agree):
    """The stored Q anchor is Q(s, stored op), recomputed by replaying the rollout (observable: the legacy
    double draw fails it). ``op_agree`` compares ``sampled_op`` (the op the value was read at: esper's second draw
    in legacy mode, ``policy.value_read_op`` on the fused paths) with the action."""
    tr = tiny_trainer(value_mode=value_mode, num_envs=8)
    tr.rollout()
    rate = tr.buffer.op_agree.float().mean().item()
    if agree:
        assert rate == 1.0
        assert_stored_q_is_q_of_stored_op(tr)
    else:
        assert rate < 0.9  # the double draw: value and action ops differ often
        with pytest.raises(AssertionError):
            assert_stored_q_is_q_of_stored_op(tr)


def test_value_modes_store_their_baselines():
    q = tiny_trainer(value_mode="q_op")
    q.rollout()
    assert torch.equal(q.buffer.values, q.buffer.old_q)
    e = tiny_trainer(value_mode="expected")
    e.rollout()
    assert not torch.allclose(e.buffer.values, e.buffer.old_q)  # V(s) vs Q(s, chosen op)
    legacy = tiny_trainer(value_mode="legacy")
    legacy.rollout()
    assert torch.equal(legacy.buffer.old_q, legacy.buffer.values)  # esper clipped around the mismatched value


def test_rollout_metrics_count_episodes():
    tr = tiny_trainer()
    stats = tr.rollout()
    assert stats["episodes"].item() >= TINY["num_envs"]  # every env finished its first 6-step episode
    assert stats["op_counts"].sum().item() == TINY["num_envs"] * TINY["rollout_steps"]
