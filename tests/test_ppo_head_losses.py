"""esper HEAD's PPO pieces (esper_fast.ppo.head_losses) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from esper_fast.constants import HEAD_NAMES
from esper_fast.ppo.head_losses import (
    ValueNormalizer,
    aux_coef_at,
    contribution_aux_loss,
    entropy_floor_penalty,
    entropy_penalty_schedule,
    forced_weights,
    head_policy_loss,
    joint_ratio_metrics,
    normalize_advantages_floored,
    value_coef_at,
    weighted_value_loss,
)
from esper_fast.rules import causal_masks


def test_value_normalizer_welford_then_ema_and_warmup():
    vn = ValueNormalizer(min_samples=32)
    x = torch.arange(10, dtype=torch.float32)
    vn.update(x)
    assert not vn.ready and torch.equal(vn.normalize(x), x)  # identity during warm-up
    y = torch.linspace(-5, 5, 30)
    vn.update(y)  # still exact merging (10 < 32 seen before this batch)
    both = torch.cat([x, y])
    torch.testing.assert_close(vn.mean, both.mean())
    torch.testing.assert_close(vn.var, both.var(correction=0))
    assert vn.ready
    z = torch.full((8,), 3.0)
    m0, v0 = vn.mean.clone(), vn.var.clone()
    vn.update(z)  # EMA: m = 0.99 m + 0.01 b; v = 0.99 v + 0.01 b_var + 0.99 * 0.01 * delta^2
    d = 3.0 - m0
    torch.testing.assert_close(vn.mean, 0.99 * m0 + 0.01 * 3.0)
    torch.testing.assert_close(vn.var, 0.99 * v0 + 0.99 * 0.01 * d**2)
    torch.testing.assert_close(vn.normalize(torch.tensor(2.0)), 2.0 / torch.sqrt(vn.var + 1e-4))
    torch.testing.assert_close(vn.denormalize(vn.normalize(torch.tensor(2.0))), torch.tensor(2.0))


def test_value_coef_warmup_and_penalty_schedule():
    assert value_coef_at(5, 1.0, 0) == 1.0
    assert value_coef_at(0, 1.0, 10) == pytest.approx(0.1)
    assert value_coef_at(5, 1.0, 10) == pytest.approx(0.55)
    assert value_coef_at(50, 1.0, 10) == 1.0
    assert [entropy_penalty_schedule(p) for p in (0.1, 0.5, 0.875, 1.0)] == [1.5, 1.0, 0.75, 0.5]


def test_advantage_std_floor():
    a = torch.tensor([1.0, 1.02, 0.98, 1.0])  # std 0.014 < 0.1: divided by 0.1, not by the std
    out, floored = normalize_advantages_floored(a)
    assert bool(floored)
    torch.testing.assert_close(out, (a - 1.0) / (0.1 + 1e-8))
    b = torch.tensor([0.0, 2.0])
    out, floored = normalize_advantages_floored(b)
    assert not bool(floored)
    torch.testing.assert_close(out, torch.tensor([-1.0, 1.0]), atol=1e-6, rtol=0)


def test_forced_steps_weighting():
    forced = torch.tensor([True, False, False, True])
    actor_w, value_w = forced_weights(forced)
    assert actor_w.tolist() == [0.0, 1.0, 1.0, 0.0]
    torch.testing.assert_close(value_w, torch.tensor([0.2, 1.0, 1.0, 0.2]))
    v, t = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.zeros(4)
    expected = 0.5 * (0.2 * 1 + 4 + 9 + 0.2 * 16) / 2.4
    torch.testing.assert_close(weighted_value_loss(v, t, value_w), torch.tensor(expected))
    op = torch.tensor([1, 0, 1, 3])
    causal = causal_masks(op)
    ratios = {h: torch.ones(4) for h in HEAD_NAMES}
    adv = torch.tensor([5.0, -1.0, 2.0, 7.0])
    # ratio 1: the op term is -mean of A over unforced steps = -(-1 + 2) / 2; blueprint (GERMINATE only):
    # unforced GERMINATE step is #2 -> -2
    loss = head_policy_loss(ratios, adv, causal, 0.2, actor_w)
    per_head = {}
    for h in HEAD_NAMES:
        m = causal[h].float() * actor_w
        per_head[h] = -((adv * (1 if h == "op" else causal[h])) * m).sum() / m.sum().clamp(min=1)
    torch.testing.assert_close(loss, sum(per_head.values()))
    assert per_head["op"].item() == pytest.approx(-0.5) and per_head["blueprint"].item() == pytest.approx(-2.0)


def test_joint_ratio_metrics():
    new = {h: torch.tensor([0.1, -0.2, 50.0]) for h in HEAD_NAMES}
    old = {h: torch.zeros(3) for h in HEAD_NAMES}
    causal = {h: torch.ones(3, dtype=torch.bool) for h in HEAD_NAMES}
    m = joint_ratio_metrics(new, old, causal, 0.2)
    expected = torch.exp(torch.tensor([0.8, -1.6, 30.0]))  # 8 heads; 8 * 20 clamped to 30
    torch.testing.assert_close(m["joint_ratio_max"], expected.max())
    torch.testing.assert_close(m["joint_ratio_mean"], expected.mean())
    torch.testing.assert_close(m["joint_clip_fraction"], torch.tensor(1.0))
    r = torch.exp(torch.tensor([0.1, -0.2, 20.0]))
    torch.testing.assert_close(m["approx_kl"], (r - 1 - torch.log(r)).mean())
    torch.testing.assert_close(m["clip_fraction/op"], torch.tensor(1 / 3))


def test_entropy_floor_penalty_and_contribution_loss():
    ent = {"op": torch.tensor([0.1, 0.2, 0.9]), "blueprint": torch.tensor([0.5, 0.0, 0.0])}
    avail = {"op": torch.ones(3, dtype=torch.bool), "blueprint": torch.tensor([True, False, False])}
    floors, coefs = {"op": 0.3, "blueprint": 0.2}, {"op": 0.3, "blueprint": 0.3}
    got = entropy_floor_penalty(ent, avail, floors, coefs)
    # op mean 0.4 >= 0.3: no penalty; blueprint mean over available = 0.5: none
    assert got.item() == 0.0
    ent["op"] = torch.tensor([0.1, 0.1, 0.1])
    torch.testing.assert_close(entropy_floor_penalty(ent, avail, floors, coefs), torch.tensor(0.3 * 0.2**2))
    pred = torch.zeros(2, 3)
    target = torch.tensor([[20.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    active = torch.tensor([[True, True, False], [True, False, False]])
    fresh = torch.tensor([True, False])
    torch.testing.assert_close(contribution_aux_loss(pred, target, active, fresh), torch.tensor((100.0 + 1.0) / 2))
    assert math.isclose(contribution_aux_loss(pred, target, active, torch.tensor([False, False])).item(), 0.0)


def test_entropy_loss_excludes_forced_and_irrelevant_steps():
    from esper_fast.ppo.head_losses import entropy_loss_head

    ent = {h: torch.tensor([0.5, 1.0, 0.25]) for h in HEAD_NAMES}
    causal = {h: torch.tensor([True, False, True]) for h in HEAD_NAMES}
    actor_w, _ = forced_weights(torch.tensor([False, False, True]))
    coefs = {"blueprint": 2.0}
    # per head: only step 0 counts (step 1 irrelevant, step 2 forced) -> 0.5; blueprint x2
    torch.testing.assert_close(entropy_loss_head(ent, causal, coefs, actor_w), torch.tensor(-(7 * 0.5 + 2 * 0.5)))


def test_contribution_coef_ramp():
    assert [aux_coef_at(n) for n in (0, 500, 1000, 5000)] == [0.0, 0.025, 0.05, 0.05]
    assert aux_coef_at(3, coef=1.0, warmup_steps=0) == 1.0  # no warm-up: max(1, 0) = 1
