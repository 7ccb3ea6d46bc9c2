"""The schema-v2 fused kernel (select_actions_v2) on every backend against the torch reference."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chisquare

from esper_fast import InvalidActionMaskError
from esper_fast.constants import HEAD_NAMES, LifecycleOp, get_action_head_sizes
from esper_fast.constants_v2 import PROBABILITY_FLOOR_PER_HEAD
from esper_fast.ops.actions_v2 import empty_action_outputs_v2, select_actions_v2
from esper_fast.ops.select import draw_key
from esper_fast.reference.actions_v2 import (
    apply_probability_floor,
    select_actions_v2_reference,
)
from tests.conftest import BACKEND_DEVICES, NATIVE_BACKEND_DEVICES, small_n

SIZES = get_action_head_sizes(3)
# odd sizes; style / alpha_target keep index 2 and tempo index 1 (their canonical actions)
ODD_SIZES = {
    "slot": 5,
    "blueprint": 17,
    "style": 3,
    "tempo": 2,
    "alpha_target": 7,
    "alpha_speed": 1,
    "alpha_curve": 9,
    "op": 7,
}
FLOORS = dict(PROBABILITY_FLOOR_PER_HEAD)


def make_inputs(n, device="cpu", seed=0, dtype=torch.float32, sizes=SIZES, with_sbo=True, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    logits = {h: (torch.randn(n, k, generator=g) * scale).to(dtype).to(device) for h, k in sizes.items()}
    masks = {}
    for h, k in sizes.items():
        m = torch.rand(n, k, generator=g) < 0.6
        m[torch.arange(n), torch.randint(0, k, (n,), generator=g)] = True
        masks[h] = m.to(device)
    q = (torch.randn(n, sizes["op"], generator=g) * 3).to(dtype).to(device)
    value = torch.randn(n, generator=g).to(dtype).to(device)
    sbo = None
    if with_sbo:
        sbo = torch.rand(n, sizes["op"], sizes["slot"], generator=g) < 0.5
        sbo[..., -1] |= ~sbo.any(-1)  # every op keeps at least one slot
        sbo = sbo.to(device)
    return logits, masks, q, value, sbo


def gumbel(n, device, sizes=SIZES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {h: (-torch.log(-torch.log(torch.rand(n, k, generator=g)))).to(device) for h, k in sizes.items()}


def poisoned(n, device):
    actions, floats = empty_action_outputs_v2(n, torch.device(device))
    actions.fill_(-12345)
    floats.fill_(float("nan"))
    floats[::2] = 7.5e6
    return actions, floats


def assert_same(a, b, atol=3e-5):
    assert list(a.actions) == list(b.actions)
    for h in HEAD_NAMES:
        assert torch.equal(a.actions[h].cpu(), b.actions[h].cpu()), h
        torch.testing.assert_close(a.log_probs[h].cpu(), b.log_probs[h].cpu(), atol=atol, rtol=1e-4, equal_nan=True)
        torch.testing.assert_close(a.entropies[h].cpu(), b.entropies[h].cpu(), atol=atol, rtol=1e-4, equal_nan=True)
    for f in ("q_op", "expected_value", "values"):
        torch.testing.assert_close(getattr(a, f).cpu(), getattr(b, f).cpu(), atol=atol, rtol=1e-5, equal_nan=True)


@pytest.mark.parametrize("backend,device", NATIVE_BACKEND_DEVICES)
@pytest.mark.parametrize("n", [1, 7, 130])
@pytest.mark.parametrize("with_sbo", [True, False])
@pytest.mark.parametrize("floors,with_value", [(None, False), (FLOORS, True)])
def test_v2_equals_reference_under_injected_noise(backend, device, n, with_sbo, floors, with_value):
    logits, masks, q, value, sbo = make_inputs(n, device, seed=n + 11 * with_sbo, with_sbo=with_sbo)
    value = value if with_value else None
    noise = gumbel(n, device, seed=n + 1)
    got = select_actions_v2(
        logits, masks, q, value, floors=floors, noise=noise, slot_by_op=sbo, backend=backend, out=poisoned(n, device)
    )
    ref = select_actions_v2_reference(
        logits, masks, q, value, floors=floors, deterministic=False, noise=noise, slot_by_op=sbo
    )
    assert_same(got, ref)
    for h in HEAD_NAMES:
        assert (got.actions[h] >= 0).all()


@pytest.mark.parametrize("backend,device", NATIVE_BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_v2_deterministic_matches_reference_all_dtypes(backend, device, dtype):
    logits, masks, q, value, sbo = make_inputs(65, device, seed=3, dtype=dtype)
    got = select_actions_v2(
        logits,
        masks,
        q,
        value,
        floors=FLOORS,
        deterministic=True,
        slot_by_op=sbo,
        backend=backend,
        out=poisoned(65, device),
    )
    ref = select_actions_v2_reference(logits, masks, q, value, floors=FLOORS, deterministic=True, slot_by_op=sbo)
    assert_same(got, ref)
    torch.testing.assert_close(got.values.cpu(), value.float().cpu())  # V(s) passes through


@pytest.mark.parametrize("backend,device", NATIVE_BACKEND_DEVICES)
@pytest.mark.parametrize("deterministic", [False, True])
def test_v2_odd_sizes(backend, device, deterministic):
    n = 33
    logits, masks, q, value, sbo = make_inputs(n, device, seed=9, sizes=ODD_SIZES)
    noise = None if deterministic else gumbel(n, device, sizes=ODD_SIZES, seed=10)
    got = select_actions_v2(
        logits,
        masks,
        q,
        value,
        floors=FLOORS,
        deterministic=deterministic,
        noise=noise,
        slot_by_op=sbo,
        backend=backend,
        out=poisoned(n, device),
    )
    assert_same(
        got,
        select_actions_v2_reference(
            logits, masks, q, value, floors=FLOORS, deterministic=deterministic, noise=noise, slot_by_op=sbo
        ),
    )


@pytest.mark.parametrize("backend,device", NATIVE_BACKEND_DEVICES)
def test_v2_internal_rng_equals_reference_streams(backend, device):
    n = small_n(backend, device, 600)
    logits, masks, q, value, sbo = make_inputs(n, device, seed=4)
    got = select_actions_v2(
        logits,
        masks,
        q,
        value,
        floors=FLOORS,
        slot_by_op=sbo,
        backend=backend,
        generator=torch.Generator(device).manual_seed(7),
    )
    key = draw_key(torch.device(device), torch.Generator(device).manual_seed(7))
    assert_same(
        got,
        select_actions_v2_reference(
            logits, masks, q, value, floors=FLOORS, deterministic=False, key=key, slot_by_op=sbo
        ),
    )


# esper HEAD's get_action: head -> (canonical action, ops for which the head is free), written out
# literally from HEAD's source (not from esper_fast.constants_v2).
HEAD_RULES = {
    "blueprint": (0, {1}),
    "style": (2, {1, 2}),
    "tempo": (1, {1}),
    "alpha_target": (2, {1, 2}),
    "alpha_speed": (0, {2, 3}),
    "alpha_curve": (0, {2, 3}),
}


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("with_sbo", [True, False])
def test_v2_canonicalisation_by_op(backend, device, with_sbo):
    n = 64
    logits, masks, q, value, sbo = make_inputs(n, device, seed=5, with_sbo=with_sbo)
    for h in HEAD_RULES:  # make the canonical action INVALID in the caller's mask: it must still be taken
        masks[h][:, HEAD_RULES[h][0]] = False
        masks[h][:, (HEAD_RULES[h][0] + 1) % SIZES[h]] = True
    for op in LifecycleOp:
        masks["op"] = torch.zeros(n, 6, dtype=torch.bool, device=device)
        masks["op"][:, op] = True
        got = select_actions_v2(logits, masks, q, value, floors=FLOORS, slot_by_op=sbo, backend=backend)
        assert (got.actions["op"] == op).all()
        assert torch.equal(got.log_probs["op"].cpu(), torch.zeros(n)) and torch.equal(
            got.entropies["op"].cpu(), torch.zeros(n)
        )
        torch.testing.assert_close(got.q_op, q[:, op])
        for h, (canonical, free_ops) in HEAD_RULES.items():
            if int(op) in free_ops:
                assert masks[h].gather(1, got.actions[h][:, None]).all(), (op, h)
            else:
                assert (got.actions[h] == canonical).all(), (op, h)
                assert torch.equal(got.log_probs[h].cpu(), torch.zeros(n))
                assert torch.equal(got.entropies[h].cpu(), torch.zeros(n))
        base = sbo[:, op] if with_sbo else masks["slot"]  # slot_by_op REPLACES the slot mask
        if op == LifecycleOp.WAIT:
            first = base.int().argmax(-1)
            assert torch.equal(got.actions["slot"], first)
        else:
            assert base.gather(1, got.actions["slot"][:, None]).all()


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_v2_single_valid_masks(backend, device):
    n = 20
    logits, masks, q, value, _ = make_inputs(n, device, seed=12, with_sbo=False)
    g = torch.Generator().manual_seed(3)
    picks = {}
    for h, k in SIZES.items():
        picks[h] = torch.randint(0, k, (n,), generator=g).to(device)
        masks[h] = torch.nn.functional.one_hot(picks[h], k).bool()
    masks["op"][:] = False
    masks["op"][:, int(LifecycleOp.GERMINATE)] = True  # every other head free except alpha_speed / curve
    for det in (True, False):
        got = select_actions_v2(
            logits,
            masks,
            q,
            value,
            floors=FLOORS,
            deterministic=det,
            backend=backend,
            generator=torch.Generator(device).manual_seed(1),
        )
        for h in ("op", "slot", "blueprint", "style", "tempo", "alpha_target"):
            assert torch.equal(got.actions[h], picks[h] if h != "op" else torch.full_like(picks[h], 1)), h
            assert torch.equal(got.log_probs[h].cpu(), torch.zeros(n)), h
            assert torch.equal(got.entropies[h].cpu(), torch.zeros(n)), h


def floored_probs_float64(logits: torch.Tensor, valid: torch.Tensor, floor: float) -> torch.Tensor:
    """esper HEAD's floor, re-derived independently (float64, loops): the test's own oracle."""
    out = torch.zeros(logits.shape, dtype=torch.float64)
    for r in range(logits.shape[0]):
        idx = [j for j in range(logits.shape[1]) if valid[r, j]]
        z = [math.exp(float(logits[r, j])) for j in idx]
        p = [v / sum(z) for v in z]
        eff = min(floor, 0.99 / len(idx))
        under = [v < eff for v in p]
        mass_over = sum(v for v, u in zip(p, under) if not u)
        scale = (1 - eff * sum(under)) / mass_over
        fp = [eff if u else v * scale for v, u in zip(p, under)]
        for j, v in zip(idx, fp):
            out[r, j] = v / sum(fp)  # the final log_softmax renormalises
    return out


def test_probability_floor_against_independent_float64():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 9, generator=g) * 4
    valid = torch.rand(200, 9, generator=g) < 0.7
    valid[:, 0] = True
    for floor in (0.02, 0.15, 0.5):
        fl = apply_probability_floor(logits, valid, floor)
        got = torch.softmax(fl, -1).double()
        torch.testing.assert_close(got, floored_probs_float64(logits, valid, floor), atol=2e-6, rtol=1e-5)
        # entries below the floor are lifted to it (one pass, as HEAD: a scaled-down entry may dip below)
        p = torch.softmax(logits.masked_fill(~valid, float("-inf")), -1).double()
        eff = torch.minimum(torch.tensor(floor, dtype=torch.float64), 0.99 / valid.sum(-1, keepdim=True)).expand_as(p)
        lifted = valid & (p < eff)
        assert lifted.any() and (got[lifted] >= eff[lifted] * 0.999).all()
        assert (got[~valid] == 0).all()
        torch.testing.assert_close(got.sum(-1), torch.ones(200, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend,device", NATIVE_BACKEND_DEVICES)
def test_v2_sampling_fits_floored_softmax(backend, device):
    n = small_n(backend, device, 20_000)
    logits, masks, q, value, _ = make_inputs(n, device, seed=6, with_sbo=False)
    row = torch.linspace(-3, 3.5, 13)
    valid = torch.tensor([False, True, True, False, True, True, True, True, False, True, True, True, True])
    logits["blueprint"] = row.expand(n, -1).contiguous().to(device)
    masks["blueprint"] = valid.expand(n, -1).contiguous().to(device)
    masks["op"][:] = False
    masks["op"][:, int(LifecycleOp.GERMINATE)] = True  # blueprint is free
    op_row = torch.tensor([2.5, 0.3, -1.0, 0.0, 1.0, -2.0])
    logits["op"] = op_row.expand(n, -1).contiguous().to(device)
    op_masks = torch.ones(n, 6, dtype=torch.bool, device=device)
    gen = torch.Generator(device).manual_seed(0)
    counts, op_counts, draws = torch.zeros(13, dtype=torch.int64), torch.zeros(6, dtype=torch.int64), 0
    target = 20_000 if n < 20_000 else 100_000  # Triton's CPU interpreter: fewer draws (still ~2000/cell)
    while draws < target:
        sel = select_actions_v2(logits, masks, q, value, floors=FLOORS, backend=backend, generator=gen)
        counts += torch.bincount(sel.actions["blueprint"].cpu(), minlength=13)
        sel_op = select_actions_v2(
            logits, {**masks, "op": op_masks}, q, value, floors=FLOORS, backend=backend, generator=gen
        )
        op_counts += torch.bincount(sel_op.actions["op"].cpu(), minlength=6)
        draws += n
    assert counts[~valid].sum() == 0
    probs = floored_probs_float64(row[None], valid[None], FLOORS["blueprint"])[0][valid]
    plain = torch.softmax(row.double().masked_fill(~valid, float("-inf")), 0)[valid]
    assert (probs - plain).abs().max() > 0.05  # the floor changes this row's distribution
    _, p_value = chisquare(counts[valid].double().numpy(), (probs * draws).numpy())
    assert p_value > 1e-3
    op_probs = floored_probs_float64(op_row[None], torch.ones(1, 6, dtype=torch.bool), FLOORS["op"])[0]
    _, p_value = chisquare(op_counts.double().numpy(), (op_probs * draws).numpy())
    assert p_value > 1e-3


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_v2_bad_rows(backend, device):
    logits, masks, q, value, _ = make_inputs(6, device, seed=8, with_sbo=False)
    masks["op"][4] = False  # no valid op: the whole row is bad
    masks["op"][:4, :] = False
    masks["op"][:4, int(LifecycleOp.GERMINATE)] = True
    masks["tempo"][2] = False  # tempo free under GERMINATE: that head is bad
    logits["slot"] = logits["slot"].clone()
    logits["slot"][1, :] = float("nan")
    got = select_actions_v2(logits, masks, q, value, floors=FLOORS, backend=backend, out=poisoned(6, device))
    for h in HEAD_NAMES:
        assert got.actions[h][4] == -1 and torch.isnan(got.log_probs[h][4]) and torch.isnan(got.entropies[h][4]), h
    assert torch.isnan(got.values[4]) and torch.isnan(got.q_op[4])
    assert got.actions["tempo"][2] == -1 and torch.isnan(got.log_probs["tempo"][2])
    assert got.actions["slot"][1] == -1 and torch.isnan(got.entropies["slot"][1])
    assert (got.actions["op"][:4] == 1).all() and torch.isfinite(got.values[:4]).all()
    ref = select_actions_v2_reference(
        logits, masks, q, value, floors=FLOORS, deterministic=False, noise=gumbel(6, device)
    )
    for h in HEAD_NAMES:
        assert torch.equal(got.actions[h] < 0, ref.actions[h] < 0), h
    with pytest.raises(InvalidActionMaskError, match="No valid actions available for head 'op'.*\\[4\\]"):
        select_actions_v2(logits, masks, q, value, backend=backend, validate=True)


def test_v2_argument_errors():
    logits, masks, q, value, sbo = make_inputs(4)
    with pytest.raises(ValueError, match="value must be a float \\[4\\]"):
        select_actions_v2(logits, masks, q, value[:3])
    with pytest.raises(ValueError, match="unknown heads \\['opp'\\]"):
        select_actions_v2(logits, masks, q, value, floors={"opp": 0.1})
    with pytest.raises(ValueError, match="floor of head 'op' must be in \\[0, 1\\)"):
        select_actions_v2(logits, masks, q, value, floors={"op": 1.5})
    with pytest.raises(ValueError, match="slot_by_op must be a bool \\[4, 6, 3\\]"):
        select_actions_v2(logits, masks, q, value, slot_by_op=sbo[:, :5])
    with pytest.raises(ValueError, match="out must be contiguous"):
        select_actions_v2(logits, masks, q, value, out=(torch.empty(8, 4, dtype=torch.int64), torch.empty(18, 4)))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("with_value", [True, False])
def test_v2_inputs_that_require_grad(backend, device, with_value):
    """Logits, q and value that require grad (a policy called outside no_grad): the same plain values
    as on detached inputs, and nothing in the results requires grad (as select_actions, v1)."""
    logits, masks, q, value, sbo = make_inputs(9, device, seed=4)
    noise = gumbel(9, device, seed=5)
    want = select_actions_v2(
        logits, masks, q, value if with_value else None, floors=FLOORS, noise=noise, slot_by_op=sbo, backend=backend
    )
    g_logits = {h: l.clone().requires_grad_(True) for h, l in logits.items()}
    g_q, g_value = q.clone().requires_grad_(True), value.clone().requires_grad_(True)
    got = select_actions_v2(
        g_logits,
        masks,
        g_q,
        g_value if with_value else None,
        floors=FLOORS,
        noise=noise,
        slot_by_op=sbo,
        backend=backend,
    )
    assert_same(got, want, atol=0)
    outs = [
        *got.actions.values(),
        *got.log_probs.values(),
        *got.entropies.values(),
        got.values,
        got.q_op,
        got.expected_value,
    ]
    assert not any(t.requires_grad for t in outs)
