"""Trainer(config, run_dir=None, *, env=None, policy=None): what it is given it trains; mismatches refused."""

from __future__ import annotations

import pytest
import torch

from esper_fast.envs import SeedLifecycleEnv
from esper_fast.envs.exact_mdp import NUM_STATES, ExactMDPEsperEnv
from esper_fast.ppo import Trainer, make_config
from esper_fast.ppo.agent import architecture, build_policy, env_config
from esper_fast.reference_policy import ReferencePolicy


def _cfg(**kw):
    base = dict(
        num_envs=4,
        rollout_steps=8,
        feature_dim=16,
        lstm_hidden_dim=16,
        eval_episodes=0,
        update_epochs=2,
        num_minibatches=2,
        seed=3,
    )
    cfg = make_config("smoke", **{**base, **kw})
    return cfg.replace(total_timesteps=cfg.batch_size * 2)


def _quiet(cfg, **kw):
    return Trainer(cfg, None, log=lambda _m: None, tensorboard=False, **kw)


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.policy.state_dict().items()}


def _same_run(a, b):
    ra = {k: v for k, v in a.last_row.items() if k != "time/sps"}
    rb = {k: v for k, v in b.last_row.items() if k != "time/sps"}
    assert ra.keys() == rb.keys()
    assert all(ra[k] == rb[k] or (ra[k] != ra[k] and rb[k] != rb[k]) for k in ra)
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_given_policy_and_env_equal_to_the_built_ones_train_bitwise_alike():
    cfg = _cfg()
    built = _quiet(cfg)
    built.train(handle_signals=False)
    torch.manual_seed(cfg.seed)
    policy = build_policy(cfg)
    env = SeedLifecycleEnv(cfg.num_envs, env_config(cfg), seed=cfg.seed)
    given = _quiet(cfg, env=env, policy=policy)
    assert given.policy is policy and given.env is env
    assert [p for g in given.optimizer.param_groups for p in g["params"]] == list(policy.parameters())
    given.train(handle_signals=False)
    _same_run(built, given)


def test_given_policy_is_the_one_trained():
    cfg = _cfg()
    torch.manual_seed(11)  # not the config's seed: different initial weights
    policy = build_policy(cfg)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    trainer = _quiet(cfg, policy=policy)
    trainer.train(handle_signals=False)
    assert trainer.policy is policy
    assert any(not torch.equal(before[k], v) for k, v in policy.state_dict().items())
    reference = _quiet(cfg)
    reference.train(handle_signals=False)
    assert any(not torch.equal(v, reference.policy.state_dict()[k]) for k, v in policy.state_dict().items())


def test_given_env_is_the_one_played():
    cfg = _cfg(value_mode="expected", gamma=0.95)
    env = ExactMDPEsperEnv(cfg.num_envs, seed=1)
    trainer = _quiet(cfg, env=env)
    start = env.mdp.state.clone()
    trainer.rollout()
    raw = trainer.buffer.raw_obs
    # ExactMDPEsperEnv's observation: the one-hot state in columns 1..NUM_STATES, zero after them
    assert torch.equal(raw[:, 0, 1 : 1 + NUM_STATES].argmax(-1), start)
    assert (raw[..., 1 + NUM_STATES :] == 0).all() and (raw[..., 1 : 1 + NUM_STATES].sum(-1) == 1).all()
    assert trainer.env is env


def test_run_dir_none_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = _quiet(_cfg(eval_episodes=2))
    summary = trainer.train(handle_signals=False)
    assert summary["checkpoint"] is None and trainer.save() is None and "evaluation" in summary
    assert trainer.state_dict()["train_steps"] == 2
    assert list(tmp_path.iterdir()) == []


def test_unfused_reference_policy_is_accepted():
    cfg = _cfg()
    ref = ReferencePolicy(
        architecture(cfg)["state_dim"],
        cfg.num_slots,
        feature_dim=cfg.feature_dim,
        lstm_hidden_dim=cfg.lstm_hidden_dim,
        value_mode=cfg.value_mode,
    )
    ref.fused_evaluate = False
    trainer = _quiet(cfg, policy=ref)
    trainer.train(handle_signals=False)
    assert trainer.policy is ref and trainer.train_steps == 2


# ---- refused, with the argument and what was expected named --------------------------------------------
def _policy(cfg, **kw):
    return build_policy(cfg.replace(**kw)) if kw else build_policy(cfg)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(lstm_hidden_dim=32), r"policy: .*lstm_hidden_dim 32 \(config: 16\)"),
        (dict(feature_dim=8), r"policy: .*feature_dim 8 \(config: 16\)"),
        (dict(lstm_layers=2), r"policy: .*lstm_layers 2 \(config: 1\)"),
        (dict(num_slots=2), r"policy: .*state_dim .* \(config: .*head_sizes"),
        (dict(value_mode="q_op"), r"policy: its value mode is 'q_op'.*config.value_mode is 'expected'"),
        (dict(value_mode="legacy"), r"policy: its value mode is 'legacy'"),
        (
            dict(ppo_variant="head", clip_value=False),
            r"policy: ppo_variant '0872525b' trains a FactoredNetwork.*FactoredPolicyV2",
        ),
    ],
)
def test_mismatched_policy_is_refused(change, match):
    cfg = _cfg(value_mode="expected")
    with pytest.raises(ValueError, match=match):
        _quiet(cfg, policy=_policy(cfg, **change))


def test_head_variant_needs_esper_heads_network():
    cfg = _cfg(ppo_variant="head", clip_value=False)
    with pytest.raises(ValueError, match=r"policy: ppo_variant 'head' trains esper HEAD's network.*got FactoredPolicy"):
        _quiet(cfg, policy=build_policy(cfg.replace(ppo_variant="0872525b")))


def test_policy_on_another_device_and_non_modules_are_refused():
    cfg = _cfg()
    with pytest.raises(ValueError, match=r"policy: parameter .* is on meta, the trainer runs on cpu"):
        _quiet(cfg, policy=build_policy(cfg).to_empty(device="meta"))
    with pytest.raises(TypeError, match="policy: expected a torch.nn.Module"):
        _quiet(cfg, policy=object())


class _WrongObs:
    """SeedLifecycleEnv's interface with observations one column too wide."""

    def __init__(self, env):
        self.env, self.num_envs, self.head_sizes = env, env.num_envs, env.head_sizes

    def observe(self):
        o = self.env.observe()
        return o._replace(obs=torch.cat([o.obs, o.obs[:, :1]], 1))

    def step(self, actions):
        return self.env.step(actions)


def test_mismatched_env_is_refused():
    cfg = _cfg()
    with pytest.raises(ValueError, match=r"env: has 5 envs, config.num_envs is 4"):
        _quiet(cfg, env=SeedLifecycleEnv(5, env_config(cfg)))
    with pytest.raises(ValueError, match=r"env: its action head sizes do not match the policy's: slot 2 \(policy: 3\)"):
        _quiet(cfg, env=SeedLifecycleEnv(4, env_config(cfg.replace(num_slots=2))))
    with pytest.raises(ValueError, match=r"env: observe\(\).obs has shape \[4, \d+\], the config needs \[4, \d+\]"):
        _quiet(cfg, env=_WrongObs(SeedLifecycleEnv(4, env_config(cfg))))
    with pytest.raises(ValueError, match=r"env: object lacks num_envs, head_sizes, observe, step"):
        _quiet(cfg, env=object())
    with pytest.raises(ValueError, match=r"env: the end-of-run evaluation plays SeedLifecycleEnv.*eval_episodes=0"):
        _quiet(cfg.replace(eval_episodes=4), env=ExactMDPEsperEnv(4))


# ---- a study built on it ------------------------------------------------------------------------------
def test_learning_study_trains_the_trainer_on_its_exact_mdp_env():
    from esper_fast.envs.exact_mdp import ExactMDP
    from esper_fast.studies.learning import train_trainer_exact

    res = train_trainer_exact(
        "q_op", 0, updates=2, num_envs=4, rollout_steps=10, hidden=16, eval_episodes=64, diag_every=1
    )
    assert res["env_steps"] == 2 * 4 * 10 and len(res["train_return_curve"]) == 2 and len(res["diag_curve"]) == 2
    mdp = ExactMDP(1)
    optimal = float(mdp.rho0 @ mdp.optimal()[1])  # the exact objective of the optimal policy bounds every policy's
    assert res["tabular_objective"] <= optimal + 1e-6 and res["final_return_se"] > 0
    assert res["final_episode_return"] == res["final_episode_return"]  # a number (2 updates: no learning claimed)


def test_state_of_a_given_env_without_state_dict_is_not_resumed_but_the_rest_is():
    """A checkpoint of a run on an env without ``state_dict`` (ExactMDPEsperEnv) resumes weights, optimizer
    and counters, and says that the envs start afresh (was: KeyError 'epoch')."""
    cfg = _cfg(value_mode="expected", gamma=0.95)
    first = _quiet(cfg, env=ExactMDPEsperEnv(cfg.num_envs, seed=1))
    first.train(handle_signals=False)
    ckpt = first.state_dict()
    assert ckpt["rank_states"][0]["env"] is None and ckpt["rank_states"][0]["env_class"] == "ExactMDPEsperEnv"
    messages: list[str] = []
    second = Trainer(cfg, None, log=messages.append, tensorboard=False, env=ExactMDPEsperEnv(cfg.num_envs, seed=2))
    second.load_state(ckpt)
    assert second.train_steps == first.train_steps
    assert all(torch.equal(v, second.policy.state_dict()[k]) for k, v in first.policy.state_dict().items())
    assert any("no resumable state" in m and "start afresh" in m for m in messages), messages


def test_a_seed_lifecycle_checkpoint_does_not_restore_into_another_env_class():
    cfg = _cfg()
    first = _quiet(cfg)
    first.train(handle_signals=False)
    ckpt = first.state_dict()
    messages: list[str] = []
    second = Trainer(cfg, None, log=messages.append, tensorboard=False, env=ExactMDPEsperEnv(cfg.num_envs, seed=2))
    start = second.env.mdp.state.clone()
    second.load_state(ckpt)
    assert any("is SeedLifecycleEnv, this run's is ExactMDPEsperEnv" in m for m in messages), messages
    assert torch.equal(second.env.mdp.state, start)
