"""esper's loss terms on small hand-computed cases: causal masking, KL weighting, value clipping."""

from __future__ import annotations

import math

import pytest
import torch

from esper_fast.constants import HEAD_NAMES, LifecycleOp
from esper_fast.ppo.losses import approx_kl, clip_fraction, entropy_loss, head_ratios, policy_loss, value_loss
from esper_fast.rules import causal_masks

WAIT, GERMINATE, PRUNE = int(LifecycleOp.WAIT), int(LifecycleOp.GERMINATE), int(LifecycleOp.PRUNE)


def zeros_per_head(n):
    return {h: torch.zeros(n) for h in HEAD_NAMES}


def test_ratios_are_per_head_and_clamped():
    new, old = zeros_per_head(2), zeros_per_head(2)
    new["op"] = torch.tensor([math.log(2.0), 50.0])
    r = head_ratios(new, old)
    assert r["op"][0].item() == pytest.approx(2.0)
    assert r["op"][1].item() == pytest.approx(math.exp(20.0), rel=1e-5)  # log-ratio clamped at 20
    assert torch.equal(r["slot"], torch.ones(2))


def test_policy_loss_masks_irrelevant_heads():
    # Step 0 is WAIT (only op matters), step 1 is GERMINATE (slot, blueprint, style, tempo, alpha_target).
    op = torch.tensor([WAIT, GERMINATE])
    causal = causal_masks(op)
    adv = torch.tensor([1.0, -2.0])
    new, old = zeros_per_head(2), zeros_per_head(2)
    new["blueprint"] = torch.tensor([5.0, math.log(1.1)])  # step 0: huge ratio but irrelevant
    new["op"] = torch.tensor([math.log(1.5), 0.0])
    ratios = head_ratios(new, old)
    loss = policy_loss(ratios, adv, causal, clip=0.2)
    # op: mean over both steps of min(r A, clip(r) A) = ((min(1.5, 1.2) * 1) + (1 * -2)) / 2 = -0.4 -> +0.4
    op_term = -((1.2 * 1.0) + (1.0 * -2.0)) / 2
    # blueprint: only step 1: min(1.1 * -2, 1.1 * -2) = -2.2 -> +2.2
    bp_term = 2.2
    # slot/style/tempo/alpha_target: relevant at step 1 only, ratio 1 -> -(-2) = 2 each
    others = 4 * 2.0
    # alpha_speed / alpha_curve: relevant for neither step -> 0
    assert loss.item() == pytest.approx(op_term + bp_term + others, rel=1e-6)


def test_approx_kl_weights_heads_by_relevance():
    op = torch.tensor([WAIT, WAIT, GERMINATE, WAIT])
    causal = causal_masks(op)
    new, old = zeros_per_head(4), zeros_per_head(4)
    new["op"] = torch.full((4,), 0.1)
    new["blueprint"] = torch.tensor([3.0, 3.0, 0.2, 3.0])  # big changes where blueprint is irrelevant
    k3 = lambda lr: math.expm1(lr) - lr  # noqa: E731
    # weights: op 1, blueprint 1/4, slot/style/tempo/alpha_target 1/4 (kl 0), alpha_speed/curve 0.
    expected = (1.0 * k3(0.1) + 0.25 * k3(0.2)) / (1.0 + 0.25 * 5)
    assert approx_kl(new, old, causal).item() == pytest.approx(expected, rel=1e-6)


def test_clip_fraction_counts_relevant_pairs_only():
    op = torch.tensor([WAIT, PRUNE])
    causal = causal_masks(op)  # WAIT: op only; PRUNE: op, slot, alpha_speed, alpha_curve
    ratios = {h: torch.ones(2) for h in HEAD_NAMES}
    ratios["op"] = torch.tensor([1.5, 1.0])
    ratios["tempo"] = torch.tensor([3.0, 3.0])  # irrelevant for both
    ratios["alpha_speed"] = torch.tensor([1.0, 0.5])
    assert clip_fraction(ratios, causal, 0.2).item() == pytest.approx(2 / 5)


def test_value_loss_clipped_and_unclipped():
    v, v_old, ret = torch.tensor([5.0, 1.0]), torch.tensor([0.0, 0.0]), torch.tensor([20.0, 0.0])
    # row 0: unclipped (5-20)^2 = 225, clipped (0+2-20)^2 = 324 -> 324; row 1: (1)^2 = 1 both -> 1
    assert value_loss(v, v_old, ret, True, 2.0).item() == pytest.approx(0.5 * (324 + 1) / 2)
    assert value_loss(v, v_old, ret, False, 2.0).item() == pytest.approx((225 + 1) / 2)  # esper: no 0.5
    assert value_loss(v, v_old, ret, True, 10.0).item() == pytest.approx(0.5 * (225 + 1) / 2)


def test_entropy_loss_uses_per_head_coefs_and_masks():
    op = torch.tensor([WAIT, GERMINATE])
    causal = causal_masks(op)
    entropy = {h: torch.full((2,), 0.5) for h in HEAD_NAMES}
    entropy["blueprint"] = torch.tensor([0.0, 0.8])  # step 0 irrelevant for blueprint
    coefs = {"op": 1.0, "blueprint": 2.0}
    # op 1.0 * 0.5; blueprint 2.0 * 0.8; slot/style/tempo/alpha_target 1.0 * 0.5 each; speed/curve: 0
    expected = -(0.5 + 1.6 + 4 * 0.5)
    assert entropy_loss(entropy, causal, coefs).item() == pytest.approx(expected)
