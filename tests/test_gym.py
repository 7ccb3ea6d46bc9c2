"""Gymnasium adapters: Gymnasium's own checker, registration, and the same trajectory as the env stepped directly."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

gymnasium = pytest.importorskip("gymnasium")
np = pytest.importorskip("numpy")

from gymnasium.utils.env_checker import check_env

import esper_fast  # noqa: F401  (registers the Gymnasium ids)
from esper_fast.constants import HEAD_NAMES
from esper_fast.envs import EnvConfig, RandomMaskedPolicy, SeedLifecycleEnv
from esper_fast.envs.exact_mdp import ExactMDPConfig, ExactMDPEsperEnv
from esper_fast.envs.gym import (
    ExactMDPGymEnv,
    ExactMDPVectorEnv,
    SeedLifecycleGymEnv,
    SeedLifecycleVectorEnv,
)

IDS = ("esper_fast/SeedLifecycle-v0", "esper_fast/ExactMDP-v0")
# The features are unbounded, so the Box is (-inf, inf): the checker's two notes about that are expected.
BOX_NOTES = ("minimum value is -infinity", "maximum value is infinity")


def _check(env) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    unexpected = [str(w.message) for w in caught if not any(n in str(w.message) for n in BOX_NOTES)]
    assert not unexpected, unexpected


@pytest.mark.parametrize("env_id", IDS)
def test_single_env_passes_gymnasiums_checker(env_id):
    env = gymnasium.make(env_id)
    _check(env.unwrapped)
    assert env.action_space.nvec.tolist() == [3, 13, 4, 3, 3, 4, 5, 6]  # HEAD_NAMES order, three slots
    assert env.observation_space.shape == (114,) and env.observation_space.dtype == np.float32


def test_checker_on_a_non_default_config():
    env = gymnasium.make(IDS[0], config=EnvConfig(num_slots=2, episode_length=5, topology="transformer"))
    assert isinstance(env.unwrapped, SeedLifecycleGymEnv) and env.observation_space.shape == (24 + 30 * 2,)
    _check(env.unwrapped)
    env = gymnasium.make(IDS[1], config=ExactMDPConfig(horizon=3))
    assert isinstance(env.unwrapped, ExactMDPGymEnv)
    _check(env.unwrapped)


@pytest.mark.parametrize("env_id", IDS)
def test_make_vec_gives_the_batched_vector_env(env_id):
    venv = gymnasium.make_vec(env_id, num_envs=3)
    assert isinstance(venv, (SeedLifecycleVectorEnv, ExactMDPVectorEnv))
    assert venv.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.SAME_STEP
    obs, info = venv.reset(seed=0)
    assert obs.shape == (3, 114) and obs.dtype == np.float32 and obs in venv.observation_space
    assert venv.action_masks().shape == (3, 41) and venv.action_masks().dtype == np.bool_
    assert set(info["action_mask"]) == {*HEAD_NAMES, *(f"_{h}" for h in HEAD_NAMES)}


def test_module_colon_id_form_imports_esper_fast():
    code = (
        "import gymnasium, sys; env = gymnasium.make('esper_fast:esper_fast/SeedLifecycle-v0'); "
        "print(type(env.unwrapped).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "SeedLifecycleGymEnv"


def test_import_without_gymnasium_still_works():
    code = "import sys; sys.modules['gymnasium'] = None; import esper_fast; print(esper_fast.FactoredPolicy.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "FactoredPolicy"


def _flat(masks: dict[str, torch.Tensor]) -> np.ndarray:
    return torch.cat([masks[h] for h in HEAD_NAMES], dim=1).numpy()


def _pairs():
    E = 6
    yield (
        "seed_lifecycle",
        SeedLifecycleVectorEnv(E, EnvConfig(episode_length=12)),
        SeedLifecycleEnv(E, EnvConfig(episode_length=12), seed=99),
    )
    yield "exact_mdp", ExactMDPVectorEnv(E, ExactMDPConfig(horizon=7)), ExactMDPEsperEnv(E, ExactMDPConfig(horizon=7))


@pytest.mark.parametrize("name", ["seed_lifecycle", "exact_mdp"])
def test_vector_env_matches_the_env_stepped_directly(name):
    """Same seed + same actions -> the same observations, rewards, ends, final observations and masks."""
    venv, direct = next((v, d) for n, v, d in _pairs() if n == name)
    seed = 2024
    obs, info = venv.reset(seed=seed)
    d_obs = direct.reset(seed)
    policy = RandomMaskedPolicy(seed=5)
    ends = 0
    for _ in range(40):
        np.testing.assert_array_equal(obs, d_obs.obs.numpy())
        np.testing.assert_array_equal(venv.action_masks(), _flat(d_obs.masks))
        for h in HEAD_NAMES:
            np.testing.assert_array_equal(info["action_mask"][h], d_obs.masks[h].numpy())
        np.testing.assert_array_equal(info["slot_by_op"], d_obs.slot_by_op.numpy())
        np.testing.assert_array_equal(info["blueprint_indices"], d_obs.blueprint_indices.numpy())
        actions = policy(d_obs)
        batch = np.stack([actions[h].numpy() for h in HEAD_NAMES], axis=1)
        obs, reward, terminated, truncated, info = venv.step(batch)
        step = direct.step(actions)
        np.testing.assert_array_equal(reward, step.reward.numpy())
        np.testing.assert_array_equal(terminated, step.terminated.numpy())
        np.testing.assert_array_equal(truncated, step.truncated.numpy())
        np.testing.assert_array_equal(info["effective_op"], step.effective_op.numpy())
        done = (step.terminated | step.truncated).numpy()
        if done.any():
            ends += int(done.sum())
            np.testing.assert_array_equal(info["_final_obs"], done)
            for i in range(len(done)):
                if done[i]:
                    np.testing.assert_array_equal(info["final_obs"][i], step.final.obs[i].numpy())
                    assert info["final_info"]["episode"]["r"][i] == step.episode_return[i].item()
                else:
                    assert info["final_obs"][i] is None
            np.testing.assert_array_equal(
                info["final_info"]["action_mask"]["op"][done], step.final.masks["op"][torch.from_numpy(done)].numpy()
            )
        else:
            assert "final_obs" not in info
        d_obs = step.next
    assert ends >= 6  # episodes of 12 / 7 steps: autoreset was exercised


@pytest.mark.parametrize(
    "make",
    [
        lambda: (
            SeedLifecycleGymEnv(EnvConfig(episode_length=9)),
            SeedLifecycleEnv(1, EnvConfig(episode_length=9), seed=0),
        ),
        lambda: (ExactMDPGymEnv(ExactMDPConfig(horizon=5)), ExactMDPEsperEnv(1, ExactMDPConfig(horizon=5))),
    ],
)
def test_single_env_matches_the_env_stepped_directly(make):
    env, direct = make()
    policy = RandomMaskedPolicy(seed=3)
    for episode in range(3):
        obs, info = env.reset(seed=10 + episode)
        d_obs = direct.reset(10 + episode)
        for _ in range(50):
            np.testing.assert_array_equal(obs, d_obs.obs[0].numpy())
            np.testing.assert_array_equal(env.action_masks(), _flat(d_obs.masks)[0])
            actions = policy(d_obs)
            obs, reward, terminated, truncated, info = env.step(np.array([int(actions[h]) for h in HEAD_NAMES]))
            step = direct.step(actions)
            assert reward == step.reward.item() and terminated == step.terminated.item()
            assert truncated == step.truncated.item()
            if terminated or truncated:  # the episode's last observation, not the auto-reset one
                np.testing.assert_array_equal(obs, step.final.obs[0].numpy())
                assert info["episode"]["r"] == step.episode_return.item()
                break
            d_obs = step.next
        else:
            pytest.fail("episode did not end")


def test_unseeded_reset_after_a_seeded_one_is_reproducible():
    a, b = SeedLifecycleVectorEnv(2), SeedLifecycleVectorEnv(2)
    a.reset(seed=1)
    b.reset(seed=1)
    np.testing.assert_array_equal(a.reset()[0], b.reset()[0])
    assert not np.array_equal(a.reset(seed=1)[0], a.reset()[0])  # reset() starts other episodes


def test_bad_actions_name_the_argument_and_head():
    venv = SeedLifecycleVectorEnv(2)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions: expected shape \(2, 8\)"):
        venv.step(np.zeros((3, 8), dtype=np.int64))
    bad = np.zeros((2, 8), dtype=np.int64)
    bad[1, HEAD_NAMES.index("op")] = 6
    with pytest.raises(ValueError, match=r"head 'op' must be in \[0, 6\), got 6 \(row 1\)"):
        venv.step(bad)
    with pytest.raises(ValueError, match="integer head indices"):
        venv.step(np.zeros((2, 8), dtype=np.float32))
    env = SeedLifecycleGymEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions: expected shape \(8,\)"):
        env.step(np.zeros(7, dtype=np.int64))
    with pytest.raises(ValueError, match="one int for the whole batch"):
        venv.reset(seed=[1, 2])
