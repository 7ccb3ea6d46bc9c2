"""The fused whole-action kernel against the head-by-head path and the torch reference."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from esper_fast import InvalidActionMaskError
from esper_fast.constants import HEAD_NAMES, GerminationStyle, LifecycleOp, get_action_head_sizes
from esper_fast.ops.actions import select_actions
from esper_fast.ops.select import draw_key
from esper_fast.reference.actions import select_actions_reference
from tests.conftest import BACKEND_DEVICES, NATIVE_BACKEND_DEVICES, small_n

SIZES = get_action_head_sizes(3)


def make_heads(n, device="cpu", seed=0, dtype=torch.float32, sizes=SIZES, with_sbo=True):
    """Random logits/masks/q/slot_by_op; every head keeps >= 1 valid entry for every op."""
    g = torch.Generator().manual_seed(seed)
    logits = {h: (torch.randn(n, k, generator=g) * 1.5).to(dtype).to(device) for h, k in sizes.items()}
    masks = {}
    for h, k in sizes.items():
        m = torch.rand(n, k, generator=g) < 0.6
        m[torch.arange(n), torch.randint(0, k, (n,), generator=g)] = True
        masks[h] = m.to(device)
    masks["style"][:, GerminationStyle.SIGMOID_ADD] = True
    q = (torch.randn(n, sizes["op"], generator=g) * 3).to(dtype).to(device)
    sbo = None
    if with_sbo:
        sbo = torch.rand(n, sizes["op"], sizes["slot"], generator=g) < 0.5
        sbo[..., 0] = True  # slot 0 is allowed for every op and valid in every slot mask
        masks["slot"][:, 0] = True  # slot 0 may be the only one an op allows
        sbo = sbo.to(device)
    return logits, masks, q, sbo


def gumbel(n, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {h: (-torch.log(-torch.log(torch.rand(n, k, generator=g)))).to(device) for h, k in SIZES.items()}


def assert_same(a, b, atol=2e-5):
    assert list(a.actions) == list(b.actions)
    for h in HEAD_NAMES:
        assert torch.equal(a.actions[h].cpu(), b.actions[h].cpu()), h
        torch.testing.assert_close(a.log_probs[h].cpu(), b.log_probs[h].cpu(), atol=atol, rtol=1e-5, equal_nan=True)
        torch.testing.assert_close(a.entropies[h].cpu(), b.entropies[h].cpu(), atol=atol, rtol=1e-5, equal_nan=True)
    torch.testing.assert_close(a.q_op.cpu(), b.q_op.cpu(), atol=atol, rtol=1e-5)
    torch.testing.assert_close(a.expected_value.cpu(), b.expected_value.cpu(), atol=atol, rtol=1e-5)


@pytest.mark.parametrize("backend,device", NATIVE_BACKEND_DEVICES)
@pytest.mark.parametrize("n", [1, 7, 130])
@pytest.mark.parametrize("with_sbo", [True, False])
def test_fused_equals_head_by_head_under_injected_noise(backend, device, n, with_sbo):
    logits, masks, q, sbo = make_heads(n, device, seed=n, with_sbo=with_sbo)
    noise = gumbel(n, device, seed=n + 1)
    fused = select_actions(logits, masks, q, noise=noise, slot_by_op=sbo, backend=backend)
    unfused = select_actions(logits, masks, q, noise=noise, slot_by_op=sbo, backend=backend, fused=False)
    assert_same(fused, unfused)
    ref = select_actions_reference(logits, masks, q, deterministic=False, noise=noise, slot_by_op=sbo)
    assert_same(fused, ref)


@pytest.mark.parametrize("backend,device", NATIVE_BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_deterministic_matches_reference(backend, device, dtype):
    logits, masks, q, sbo = make_heads(65, device, seed=3, dtype=dtype)
    got = select_actions(logits, masks, q, deterministic=True, slot_by_op=sbo, backend=backend)
    assert_same(got, select_actions_reference(logits, masks, q, deterministic=True, slot_by_op=sbo))


@pytest.mark.parametrize("backend,device", NATIVE_BACKEND_DEVICES)
def test_fused_internal_rng_equals_reference_streams(backend, device):
    n = small_n(backend, device, 600)
    logits, masks, q, sbo = make_heads(n, device, seed=4)
    got = select_actions(
        logits, masks, q, slot_by_op=sbo, backend=backend, generator=torch.Generator(device).manual_seed(7)
    )
    key = draw_key(torch.device(device), torch.Generator(device).manual_seed(7))
    assert_same(got, select_actions_reference(logits, masks, q, deterministic=False, key=key, slot_by_op=sbo))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_op_dependent_rules(backend, device):
    n = 96
    logits, masks, q, sbo = make_heads(n, device, seed=5)
    for op in LifecycleOp:
        masks["op"] = torch.zeros(n, 6, dtype=torch.bool, device=device)
        masks["op"][:, op] = True
        got = select_actions(logits, masks, q, slot_by_op=sbo, backend=backend)
        assert (got.actions["op"] == op).all()
        assert torch.equal(got.log_probs["op"].cpu(), torch.zeros(n))
        torch.testing.assert_close(got.q_op, q[:, op].float())
        torch.testing.assert_close(got.expected_value, q[:, op].float())
        if op in (LifecycleOp.GERMINATE, LifecycleOp.SET_ALPHA_TARGET):
            assert masks["style"].gather(1, got.actions["style"][:, None]).all()
        else:
            assert (got.actions["style"] == GerminationStyle.SIGMOID_ADD).all()
        allowed = sbo[:, op] & masks["slot"]
        assert allowed.gather(1, got.actions["slot"][:, None]).all()


@pytest.mark.parametrize("backend,device", NATIVE_BACKEND_DEVICES)
def test_fused_never_samples_masked_entries_and_fits_softmax(backend, device):
    n = small_n(backend, device, 20_000)
    draws, counts = 0, torch.zeros(13, dtype=torch.int64)
    logits, masks, q, _ = make_heads(n, device, seed=6, with_sbo=False)
    row = torch.linspace(-1, 1.5, 13)
    valid = torch.tensor([False, True, True, False, True, True, True, True, False, True, True, True, True])
    logits["blueprint"] = row.expand(n, -1).contiguous().to(device)
    masks["blueprint"] = valid.expand(n, -1).contiguous().to(device)
    gen = torch.Generator(device).manual_seed(0)
    while draws < 100_000:
        sel = select_actions(logits, masks, q, backend=backend, generator=gen)
        for h in HEAD_NAMES:
            assert masks[h].gather(1, sel.actions[h][:, None].clamp(min=0)).all() and (sel.actions[h] >= 0).all()
        counts += torch.bincount(sel.actions["blueprint"].cpu(), minlength=13)
        draws += n
    assert counts[~valid].sum() == 0
    probs = torch.softmax(row.double().masked_fill(~valid, float("-inf")), 0)[valid]
    _, p_value = chisquare(counts[valid].double().numpy(), (probs * draws).numpy())
    assert p_value > 1e-3


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_bad_rows(backend, device):
    logits, masks, q, _ = make_heads(6, device, seed=8, with_sbo=False)
    masks["tempo"][2] = False
    got = select_actions(logits, masks, q, backend=backend)
    assert got.actions["tempo"][2] == -1 and torch.isnan(got.log_probs["tempo"][2])
    assert (got.actions["op"] >= 0).all()
    with pytest.raises(InvalidActionMaskError, match="No valid actions available for head 'tempo'.*\\[2\\]"):
        select_actions(logits, masks, q, backend=backend, validate=True)


def test_argument_errors():
    logits, masks, q, sbo = make_heads(4)
    with pytest.raises(ValueError, match="missing \\['op'\\]"):
        select_actions({h: v for h, v in logits.items() if h != "op"}, masks, q)
    with pytest.raises(ValueError, match="masks\\['slot'\\] must be a bool"):
        select_actions(logits, {**masks, "slot": masks["slot"].float()}, q)
    with pytest.raises(ValueError, match="q must be a float \\[4, 6\\]"):
        select_actions(logits, masks, q[:, :5])
    with pytest.raises(ValueError, match="slot_by_op must be a bool \\[4, 6, 3\\]"):
        select_actions(logits, masks, q, slot_by_op=sbo[:, :5])


def test_validate_reports_non_finite_logits_and_op_rule_conflicts():
    logits, masks, q, sbo = make_heads(5, with_sbo=True)
    logits["alpha_curve"] = logits["alpha_curve"].clone()
    logits["alpha_curve"][3] = float("nan")
    with pytest.raises(ValueError, match="logits\\['alpha_curve'\\] contain inf/nan.*\\[3\\]"):
        select_actions(logits, masks, q, validate=True, backend="cpu")
    logits, masks, q, sbo = make_heads(5, with_sbo=True)
    sbo[:] = False  # no slot allowed for any op
    with pytest.raises(InvalidActionMaskError, match="op-dependent rules"):
        select_actions(logits, masks, q, slot_by_op=sbo, validate=True, backend="cpu")
