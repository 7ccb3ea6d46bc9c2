"""GAE: the vectorised ``compute_gae`` against plain Python loops of esper's rule, exactly."""

from __future__ import annotations

import pytest
import torch

from esper_fast.ppo.gae import compute_gae, explained_variance, normalize_advantages

GAMMA, LAMBDA = 0.995, 0.98
# (num_envs, num_steps): odd sizes, a single env, a single step.
SIZES = [(7, 123), (1, 1), (3, 2), (13, 57)]


def esper_gae_per_env(rewards, values, dones, truncated, bootstrap, gamma, lam):
    """esper's ``compute_advantages_and_returns`` for one env's episode (``[n]`` tensors), verbatim."""
    n = rewards.shape[0]
    adv = torch.zeros(n)
    last_gae = torch.zeros(())
    for t in reversed(range(n)):
        done, trunc = bool(dones[t]), bool(truncated[t])
        if t == n - 1:
            if trunc:
                next_v, nnt = bootstrap[t], 1.0
            else:
                next_v, nnt = 0.0, 1.0 - float(done)
        else:
            next_v, nnt = values[t + 1], 1.0 - float(done and not trunc)
        if done and not trunc:
            last_gae = torch.zeros(())
        delta = rewards[t] + gamma * next_v * nnt - values[t]
        last_gae = delta + gamma * lam * nnt * last_gae
        adv[t] = last_gae
    return adv


def general_gae_loop(rewards, values, dones, truncated, bootstrap, gamma, lam):
    """esper's rule applied at every episode end of a multi-episode rollout (the module docstring)."""
    E, T = rewards.shape
    adv = torch.zeros(E, T)
    for e in range(E):
        last_gae = torch.zeros(())
        for t in reversed(range(T)):
            done, trunc = bool(dones[e, t]), bool(truncated[e, t])
            if done and not trunc:  # terminal: no bootstrap, trace restarts
                next_v, nnt, cont = 0.0, 0.0, 0.0
            elif done or t == T - 1:  # truncation, or the rollout cut: bootstrap from V(s')
                next_v, nnt, cont = bootstrap[e, t], 1.0, 0.0 if done else 1.0
            else:
                next_v, nnt, cont = values[e, t + 1], 1.0, 1.0
            delta = rewards[e, t] + gamma * next_v * nnt - values[e, t]
            last_gae = delta + gamma * lam * cont * last_gae
            adv[e, t] = last_gae
    return adv


def random_rollout(E, T, seed, p_done=0.08):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(E, T, generator=g) * 3
    values = torch.randn(E, T, generator=g) * 5
    dones = torch.rand(E, T, generator=g) < p_done
    truncated = dones & (torch.rand(E, T, generator=g) < 0.5)
    bootstrap = torch.randn(E, T, generator=g) * 5
    last = torch.zeros(E, T, dtype=torch.bool)
    last[:, -1] = True
    bootstrap = torch.where(truncated | (last & ~dones), bootstrap, torch.zeros_like(bootstrap))
    return rewards, values, dones, truncated, bootstrap


@pytest.mark.parametrize("E,T", SIZES)
@pytest.mark.parametrize("seed", [0, 1])
def test_gae_matches_python_loop_exactly(E, T, seed):
    rewards, values, dones, truncated, bootstrap = random_rollout(E, T, seed)
    adv, ret = compute_gae(rewards, values, dones, truncated, bootstrap, GAMMA, LAMBDA)
    expected = general_gae_loop(rewards, values, dones, truncated, bootstrap, GAMMA, LAMBDA)
    assert torch.equal(adv, expected)
    assert torch.equal(ret, expected + values)


@pytest.mark.parametrize("E,T", SIZES)
@pytest.mark.parametrize("end", ["truncated", "terminal", "mixed"])
def test_gae_is_esper_on_esper_shaped_batches(E, T, end):
    """One episode per env that ends at the last step (esper's buffer): esper's code, bit for bit."""
    rewards, values, _, _, bootstrap = random_rollout(E, T, seed=E * 1000 + T)
    dones = torch.zeros(E, T, dtype=torch.bool)
    dones[:, -1] = True
    truncated = torch.zeros_like(dones)
    if end == "truncated":
        truncated[:, -1] = True
    elif end == "mixed":
        truncated[::2, -1] = True
    bootstrap = torch.where(truncated, bootstrap + 1.0, torch.zeros_like(bootstrap))
    adv, _ = compute_gae(rewards, values, dones, truncated, bootstrap, GAMMA, LAMBDA)
    for e in range(E):
        ref = esper_gae_per_env(rewards[e], values[e], dones[e], truncated[e], bootstrap[e], GAMMA, LAMBDA)
        assert torch.equal(adv[e], ref), f"env {e}"


def test_truncation_bootstraps_and_terminal_does_not():
    # Single step, reward 1, value 0: truncated -> 1 + gamma * boot; terminal -> 1 (boot ignored).
    r, v = torch.ones(2, 1), torch.zeros(2, 1)
    dones = torch.ones(2, 1, dtype=torch.bool)
    truncated = torch.tensor([[True], [False]])
    boot = torch.full((2, 1), 10.0)
    adv, _ = compute_gae(r, v, dones, truncated, boot, 0.9, 0.95)
    assert adv[0, 0].item() == pytest.approx(1 + 0.9 * 10)
    assert adv[1, 0].item() == pytest.approx(1.0)


def test_trace_does_not_cross_an_episode_end():
    # Episode ends (truncated) at t=0; the next episode's big reward at t=1 must not leak into t=0.
    r = torch.tensor([[0.0, 100.0]])
    v = torch.zeros(1, 2)
    dones = torch.tensor([[True, False]])
    truncated = torch.tensor([[True, False]])
    boot = torch.tensor([[2.0, 0.0]])
    adv, _ = compute_gae(r, v, dones, truncated, boot, 0.5, 1.0)
    assert adv[0, 0].item() == pytest.approx(0.5 * 2.0)
    assert adv[0, 1].item() == pytest.approx(100.0)


def test_normalize_and_explained_variance():
    a = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    n = normalize_advantages(a)
    assert n.mean().abs().item() < 1e-6 and n.std(correction=0).item() == pytest.approx(1.0, abs=1e-6)
    ret = torch.randn(4, 9)
    assert explained_variance(ret, ret).item() == pytest.approx(1.0)
    assert explained_variance(torch.zeros(4, 9), torch.ones(4, 9)).item() == 0.0  # constant returns
