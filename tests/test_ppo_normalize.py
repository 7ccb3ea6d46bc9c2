"""ppo/normalize.py: the observation EMA and the reward running std, checked against direct statistics."""

from __future__ import annotations

import pytest
import torch

from esper_fast.ppo.normalize import ObsNormalizer, RewardNormalizer


def weighted_mixture_moments(a: torch.Tensor, b: torch.Tensor, wa: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the pooled sample where ``a``'s rows weigh ``wa`` in total and ``b``'s ``1 - wa``."""
    x = torch.cat([a, b]).double()
    w = torch.cat([torch.full((len(a),), wa / len(a)), torch.full((len(b),), (1 - wa) / len(b))]).double()
    mean = (w[:, None] * x).sum(0)
    var = (w[:, None] * (x - mean) ** 2).sum(0)
    return mean, var


def test_obs_update_is_the_momentum_weighted_pool_of_old_and_new_samples():
    g = torch.Generator().manual_seed(0)
    norm = ObsNormalizer(3, momentum=0.9)
    # The start (mean 0, var 1) is the pool of the two points -1 and +1 in every feature.
    old = torch.tensor([[-1.0] * 3, [1.0] * 3])
    batch = torch.randn(50, 3, generator=g) * torch.tensor([0.5, 2.0, 3.0]) + torch.tensor([1.0, -2.0, 4.0])
    norm.update(batch.view(5, 10, 3))  # any leading shape is flattened
    mean, var = weighted_mixture_moments(old, batch, 0.9)
    torch.testing.assert_close(norm.mean.double(), mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(norm.var.double(), var, atol=1e-5, rtol=1e-5)
    assert float(norm.count) == pytest.approx(1e-4 + 50)


def test_obs_normalize_standardises_and_clips():
    norm = ObsNormalizer(2, clip=2.0)
    norm.mean, norm.var = torch.tensor([1.0, -1.0]), torch.tensor([4.0, 0.25])
    x = torch.tensor([[3.0, -1.0], [100.0, -100.0]])
    got = norm.normalize(x)
    torch.testing.assert_close(got[0], torch.tensor([2.0 / (4.0001**0.5), 0.0]))
    assert torch.equal(got[1], torch.tensor([2.0, -2.0]))  # clipped to +-clip


def test_disabled_obs_normalizer_is_the_identity_and_never_moves():
    norm = ObsNormalizer(2, enabled=False)
    x = torch.randn(4, 2)
    assert norm.normalize(x) is x
    norm.update(x * 10)
    assert torch.equal(norm.mean, torch.zeros(2)) and torch.equal(norm.var, torch.ones(2))


def test_obs_state_dict_round_trips_and_rejects_another_width():
    a = ObsNormalizer(3)
    a.update(torch.randn(8, 3))
    b = ObsNormalizer(3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 3)
    assert torch.equal(a.normalize(x), b.normalize(x))
    with pytest.raises(ValueError, match="obs normaliser: expected mean of shape"):
        ObsNormalizer(4).load_state_dict(a.state_dict())


def test_reward_normalizer_divides_by_the_std_of_every_reward_seen():
    g = torch.Generator().manual_seed(1)
    norm = RewardNormalizer(clip=100.0)
    seen = []
    for _ in range(6):
        r = torch.randn(7, generator=g) * 3 + 1
        seen.append(r)
        got = norm.update_and_normalize(r)
        std = torch.cat(seen).double().std(unbiased=True)  # direct, over all rewards so far
        torch.testing.assert_close(got.double(), r.double() / std, atol=1e-6, rtol=1e-6)
        assert got.dtype == r.dtype
    assert float(norm.count) == 42


def test_reward_normalizer_first_single_reward_passes_raw_but_clipped():
    norm = RewardNormalizer(clip=10.0)
    assert torch.equal(norm.update_and_normalize(torch.tensor([3.0])), torch.tensor([3.0]))
    fresh = RewardNormalizer(clip=10.0)
    assert torch.equal(fresh.update_and_normalize(torch.tensor([30.0])), torch.tensor([10.0]))


def test_reward_normalizer_clips_and_round_trips():
    norm = RewardNormalizer(clip=1.0)
    out = norm.update_and_normalize(torch.tensor([-5.0, 0.0, 5.0, 100.0]))
    assert out.abs().max() <= 1.0 and out[-1] == 1.0 and out[0] == -out[2]
    other = RewardNormalizer(clip=1.0)
    other.load_state_dict(norm.state_dict())
    r = torch.tensor([0.3, -0.2])
    assert torch.equal(norm.update_and_normalize(r.clone()), other.update_and_normalize(r.clone()))


def test_disabled_reward_normalizer_is_the_identity():
    norm = RewardNormalizer(enabled=False)
    r = torch.tensor([50.0, -3.0])
    assert norm.update_and_normalize(r) is r and float(norm.count) == 0
