"""The SB3-style ``PPO``: learn / save / load / predict(obs, state, episode_start), explicit episode starts."""

from __future__ import annotations

import pytest
import torch

from esper_fast.constants import HEAD_NAMES
from esper_fast.envs import EnvConfig, SeedLifecycleEnv
from esper_fast.ppo import PPO
from esper_fast.ppo.agent import PolicyActor, env_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("api")
    model = PPO("smoke", run_dir=run, tensorboard=False, eval_episodes=2).learn()
    path = model.save(run / "model.pt")
    return model, path


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[h], b[h]) for h in HEAD_NAMES)


def test_learn_trains_and_evaluates(trained):
    model, _ = trained
    assert model.trainer.train_steps == model.config.num_updates == 2
    assert set(model.last_summary["evaluation"]) == {"ppo (sampled)", "ppo (greedy)", "heuristic", "random", "oracle"}
    assert "se_return" in model.last_summary["evaluation"]["heuristic"]


def test_load_gives_the_same_greedy_actions(trained):
    model, path = trained
    loaded = PPO.load(path)
    env = SeedLifecycleEnv(5, env_config(model.config), seed=3)
    obs = env.reset(3)
    state_a = state_b = None
    for t in range(20):
        a, state_a = model.predict(obs, state_a, episode_start=torch.full((5,), t == 0), deterministic=True)
        b, state_b = loaded.predict(obs, state_b, episode_start=torch.full((5,), t == 0), deterministic=True)
        assert _same(a, b)
        obs = env.step(a).next


def test_predict_follows_explicit_episode_starts_like_policy_actor(trained):
    """Through the Gymnasium adapter (numpy obs + info) with episode_start from terminated | truncated,
    predict picks exactly PolicyActor's actions on the env stepped directly, across auto-resets."""
    gym = pytest.importorskip("esper_fast.envs.gym")
    np = pytest.importorskip("numpy")
    model, _ = trained
    cfg = EnvConfig(episode_length=6)
    venv = gym.SeedLifecycleVectorEnv(4, cfg)
    direct = SeedLifecycleEnv(4, cfg, seed=0)
    actor = PolicyActor(model.policy, model.trainer.obs_normalizer, deterministic=True)
    obs, info = venv.reset(seed=11)
    d_obs = direct.reset(11)
    state, start = None, np.ones(4, dtype=bool)
    for _ in range(15):  # 2.5 episodes per row
        actions, state = model.predict(obs, state, episode_start=start, deterministic=True, info=info)
        expected = actor(d_obs, episode_start=torch.from_numpy(start))
        np.testing.assert_array_equal(actions, torch.stack([expected[h] for h in HEAD_NAMES], 1).numpy())
        obs, _, terminated, truncated, info = venv.step(actions)
        start = terminated | truncated
        d_obs = direct.step(expected).next
    assert actions.shape == (4, 8)


def test_episode_start_zeroes_the_state(trained):
    model, _ = trained
    env = SeedLifecycleEnv(3, env_config(model.config), seed=1)
    obs = env.reset(1)
    _, state = model.predict(obs, None, deterministic=True)
    for _ in range(3):
        actions, state = model.predict(obs, state, deterministic=True)
        obs = env.step(actions).next
    with_start, _ = model.predict(obs, state, episode_start=torch.ones(3, dtype=torch.bool), deterministic=True)
    fresh, _ = model.predict(obs, None, deterministic=True)
    assert _same(with_start, fresh)
    # without episode_start the carried state is used (it changes the hidden output)
    _, carried = model.predict(obs, state, deterministic=True)
    _, restarted = model.predict(obs, None, deterministic=True)
    assert not torch.equal(carried[0], restarted[0])


def test_single_observation_gives_one_action_array(trained):
    gym = pytest.importorskip("esper_fast.envs.gym")
    model, _ = trained
    env = gym.SeedLifecycleGymEnv()
    obs, info = env.reset(seed=0)
    action, _ = model.predict(obs, None, episode_start=True, info=info)
    assert action.shape == (8,) and env.action_space.contains(action)
    env.step(action)


def test_learn_after_load_continues(trained, tmp_path):
    model, path = trained
    loaded = PPO.load(path, run_dir=tmp_path / "more", tensorboard=False)
    loaded.learn(total_timesteps=loaded.config.batch_size)
    assert loaded.trainer.train_steps == model.trainer.train_steps + 1
    assert loaded.trainer.global_step == model.trainer.global_step + loaded.config.batch_size


def test_bad_calls_are_clear(trained):
    model, _ = trained
    with pytest.raises(ValueError, match="info: a raw observation needs"):
        model.predict(torch.zeros(2, 114))
    env = SeedLifecycleEnv(2, env_config(model.config), seed=0)
    obs = env.reset(0)
    with pytest.raises(ValueError, match="episode_start: expected 2 booleans"):
        model.predict(obs, None, episode_start=[True, False, True])
    with pytest.raises(RuntimeError, match="call learn\\(\\) or load\\(\\) first"):
        PPO("smoke").predict(obs)
    with pytest.raises(RuntimeError, match="nothing to save"):
        PPO("smoke").save("x.pt")
